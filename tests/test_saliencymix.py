"""SaliencyMix (engine/saliency.py): saliency map, boxes, paste, soft targets, the batch source."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cifar100
import engine.saliency as sal
from engine.data import TensorLoader
from engine.saliency import (SaliencyMix, center_surround, fine_grained_saliency, sample_beta, saliency_mix,
                             saliency_peak)
from registry.datasets import TensorSplit, dataset_spec

CIFAR = dataset_spec("cifar100")
MEAN, STD = np.array(CIFAR.mean).reshape(3, 1, 1), np.array(CIFAR.std).reshape(3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """[0, 1] RGB images (B x 3 x H x W numpy) -> CIFAR-100-normalised float32 tensor."""
    return torch.from_numpy(((pixels - MEAN) / STD).astype(np.float32))


def squares_batch(spots, size=32, side=5, seed=0):
    """Dark images, each with a bright ``side`` x ``side`` square at its (top, left) and a slightly
    different dark tint (so every pixel of one image differs from the same pixel of another)."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((len(spots), 3, size, size))
    for i, (top, left) in enumerate(spots):
        imgs[i] = 0.05 + 0.02 * i + 0.01 * rng.random((3, 1, 1))
        imgs[i, :, top:top + side, left:left + side] = 0.95
    return imgs


# ----------------------------------------------------------------------------- saliency map
def numpy_saliency(pixels: np.ndarray, scales) -> np.ndarray:
    """Independent loop version: BT.601 luma x 255, two [1,2,1]/4 blurs (mirrored border), then
    for each pixel and scale |center - mean of the clipped window without the center|, summed
    over scales and divided by the maximum."""
    grey = 255 * (0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2])
    for _ in range(2):
        p = np.pad(grey, 1, mode="reflect")
        k = np.array([1, 2, 1]) / 4
        grey = sum(k[i] * k[j] * p[i:i + grey.shape[0], j:j + grey.shape[1]] for i in range(3) for j in range(3))
    h, w = grey.shape
    out = np.zeros_like(grey)
    for n in scales:
        for y in range(h):
            for x in range(w):
                y0, y1 = max(y - n + 1, 0), min(y + n + 1, h)
                x0, x1 = max(x - n + 1, 0), min(x + n + 1, w)
                window = grey[y0:y1, x0:x1]
                surround = (window.sum() - grey[y, x]) / (window.size - 1)
                out[y, x] += abs(grey[y, x] - surround)
    return out / out.max()


def test_saliency_matches_an_independent_loop_including_clipped_windows():
    rng = np.random.default_rng(1)
    pixels = rng.random((2, 3, 9, 13))
    pixels[1, :, 2:5, 6:9] = 1.0
    scales = (2, 3, 5, 12)  # 12 > image: windows clipped on every side
    got = fine_grained_saliency(normalise(pixels), CIFAR.mean, CIFAR.std, scales=scales).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], numpy_saliency(pixels[i], scales), rtol=1e-4, atol=1e-5)


def test_center_surround_is_signed_and_excludes_the_center():
    grey = torch.zeros(1, 5, 5)
    grey[0, 2, 2] = 24.0  # a single bright pixel: at scale 1 the window is rows/cols 2..3, 3 neighbours
    d = center_surround(grey, scales=(1,))[0, 0]
    assert d[2, 2].item() == pytest.approx(24.0, abs=1e-5)  # neighbours all 0: center - 0
    assert d[1, 1].item() == pytest.approx(-24.0 / 3, abs=1e-5)  # window rows/cols 1..2 holds the bright pixel
    assert d[3, 3].item() == pytest.approx(0.0, abs=1e-5)  # window rows/cols 3..4 does not reach (2, 2)


@pytest.mark.parametrize("chans", [3, 1])
def test_saliency_peaks_on_a_bright_square(chans):
    spots = [(10, 20), (0, 0), (27, 12), (14, 3)]  # middle, corner, bottom border, left side
    pixels = squares_batch(spots)
    x = normalise(pixels)
    mean, std = CIFAR.mean, CIFAR.std
    if chans == 1:
        x, mean, std = x[:, :1], CIFAR.mean[:1], CIFAR.std[:1]
    rows, cols = saliency_peak(fine_grained_saliency(x, mean, std))
    for (top, left), r, c in zip(spots, rows.tolist(), cols.tolist()):
        assert top <= r < top + 5 and left <= c < left + 5, (top, left, r, c)


# ----------------------------------------------------------------------------- boxes and paste
def expected_box(r, c, lam, h=32, w=32):
    cut = math.sqrt(1 - lam)
    hh, hw = int(h * cut) // 2, int(w * cut) // 2
    return max(r - hh, 0), min(r + hh, h), max(c - hw, 0), min(c + hw, w)


def test_batched_box_sits_on_each_source_salient_point_and_pastes_the_partner():
    spots = [(10, 20), (0, 0), (27, 12), (14, 3)]
    x = normalise(squares_batch(spots))
    y = torch.tensor([3, 7, 1, 7])
    perm = torch.tensor([2, 0, 3, 1])
    lam = 0.75  # box side int(32 * 0.5) = 16, half 8
    mixed, targets, lam_used = saliency_mix(x, y, perm, lam, 10, CIFAR.mean, CIFAR.std, "batched")
    for i in range(4):
        j = int(perm[i])
        # the source's own salient point, from that image alone
        r, c = (int(v) for v in saliency_peak(fine_grained_saliency(x[j:j + 1], CIFAR.mean, CIFAR.std)))
        top, left = spots[j]
        assert top <= r < top + 5 and left <= c < left + 5
        r0, r1, c0, c1 = expected_box(r, c, lam)
        want = x[i].clone()
        want[:, r0:r1, c0:c1] = x[j][:, r0:r1, c0:c1]
        assert torch.equal(mixed[i], want), i
        area = (r1 - r0) * (c1 - c0)
        assert lam_used[i].item() == pytest.approx(1 - area / 1024)
    # target 1's source square is inside the image: the full 16 x 16 box; the others' sources sit
    # at a border or corner, so their boxes are cut and their lambda is larger (per sample)
    assert lam_used[1].item() == pytest.approx(0.75)
    assert all(lam_used[i].item() > 0.75 for i in (0, 2, 3))


def test_soft_targets_give_the_lambda_mix_of_two_cross_entropies():
    spots = [(10, 20), (0, 0), (27, 12), (14, 3), (5, 5), (20, 25)]
    x = normalise(squares_batch(spots))
    y = torch.tensor([0, 4, 4, 9, 2, 5])
    perm = torch.tensor([1, 2, 0, 5, 3, 4])
    mixed, targets, lam_used = saliency_mix(x, y, perm, 0.4, 10, CIFAR.mean, CIFAR.std, "batched")
    assert targets.shape == (6, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    logp = logits.log_softmax(1)
    per_sample = []
    for i in range(6):
        lam_i = float(lam_used[i])
        j = int(perm[i])
        assert targets[i, y[i]].item() == pytest.approx(lam_i if y[i] != y[j] else 1.0)
        per_sample.append(-lam_i * logp[i, y[i]] - (1 - lam_i) * logp[i, y[j]])
    assert F.cross_entropy(logits, targets).item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-6)


def test_reference_variant_pastes_one_box_into_every_image():
    spots = [(10, 20), (0, 0), (27, 12), (14, 3)]
    x = normalise(squares_batch(spots))
    y = torch.arange(4)
    perm = torch.tensor([3, 2, 1, 0])
    lam = 0.5
    mixed, _, lam_used = saliency_mix(x, y, perm, lam, 10, CIFAR.mean, CIFAR.std, "reference")
    r, c = (int(v) for v in saliency_peak(fine_grained_saliency(x[3:4], CIFAR.mean, CIFAR.std)))
    r0, r1, c0, c1 = expected_box(r, c, lam)
    box = torch.zeros(32, 32, dtype=torch.bool)
    box[r0:r1, c0:c1] = True
    for i in range(4):
        changed = (mixed[i] != x[i]).any(0)
        assert torch.equal(changed, box), i  # every image differs from its partner everywhere
        assert torch.equal(mixed[i][:, box], x[perm[i]][:, box])
    area = (r1 - r0) * (c1 - c0)
    torch.testing.assert_close(lam_used, torch.full((4,), 1 - area / 1024))


def test_unknown_variant_is_a_value_error():
    with pytest.raises(ValueError, match="variant"):
        SaliencyMix([], variant="per_pixel", num_classes=10)


# ----------------------------------------------------------------------------- the batch source
def tiny_loader(n=40, batch=8, with_index=False, seed=0):
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 1, 32, 32), generator=g, dtype=torch.uint8)
    images[:, :, 4:9, 4:9] = 255
    labels = torch.randint(0, 10, (n,), generator=g)
    loader = TensorLoader(TensorSplit(images, labels, dataset_spec("digits")), batch, train=True,
                          device=torch.device("cpu"), seed=seed, with_index=with_index)
    loader.labels_cpu = labels
    return loader


def digits_mix(loader, p, seed=5, variant="batched"):
    spec = dataset_spec("digits")
    return SaliencyMix(loader, p=p, variant=variant, num_classes=10, mean=spec.mean, std=spec.std, seed=seed)


def test_p0_yields_the_batches_unchanged_and_forwards_the_loader():
    plain = list(tiny_loader(with_index=True))
    src = digits_mix(tiny_loader(with_index=True), p=0.0)
    got = list(src)
    assert len(got) == len(plain) == len(src) == 5
    for (x, y, idx), (x2, y2, idx2) in zip(plain, got):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(idx, idx2) and y2.dtype == torch.long
    assert src.num_samples == 40 and torch.equal(src.labels_cpu, tiny_loader().labels_cpu)
    src.set_epoch(3)  # the TensorLoader has none: a no-op


def test_p1_mixes_every_batch_and_keeps_the_index():
    plain = list(tiny_loader(with_index=True))
    for (x, y, idx), (xm, t, idx2) in zip(plain, digits_mix(tiny_loader(with_index=True), p=1.0)):
        assert t.shape == (8, 10) and t.dtype == torch.float32 and torch.equal(idx, idx2)
        torch.testing.assert_close(t.sum(1), torch.ones(8))
        assert not torch.equal(xm, x)


def test_about_p_of_the_batches_are_mixed():
    src = digits_mix(tiny_loader(n=400, batch=2), p=0.3)
    mixed = sum(t.dtype.is_floating_point for _, t in src)
    assert 35 <= mixed <= 85  # 200 batches, p 0.3: 60 expected, sd ~6.5


def test_state_dict_round_trip_reproduces_the_mixes():
    src = digits_mix(tiny_loader(), p=0.5)
    list(src)  # one epoch moves every generator
    state = src.state_dict()
    first = list(src)
    other = digits_mix(tiny_loader(), p=0.5, seed=99)  # different seed: only the state makes it equal
    other.load_state_dict(state)
    second = list(other)
    assert any(t.dtype.is_floating_point for _, t in first) and any(not t.dtype.is_floating_point for _, t in first)
    for (x1, t1), (x2, t2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(t1, t2)
    third = list(digits_mix(tiny_loader(), p=0.5, seed=99))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, third))


@pytest.mark.parametrize("a", [0.5, 2.0])
def test_beta_sampler_moments(a):
    g = torch.Generator().manual_seed(0)
    draws = np.array([sample_beta(a, a, g) for _ in range(3000)])
    assert draws.min() >= 0 and draws.max() <= 1
    assert abs(draws.mean() - 0.5) < 0.02
    assert abs(draws.var() - 1 / (4 * (2 * a + 1))) < 0.01  # Beta(a, a) variance


# ----------------------------------------------------------------------------- teacher training
def test_cifar100_trains_one_epoch_with_saliencymix(tmp_path, monkeypatch):
    calls = []
    real = sal.saliency_mix

    def counting(x, y, perm, lam, num_classes, mean, std, variant):
        calls.append((variant, tuple(x.shape)))
        return real(x, y, perm, lam, num_classes, mean, std, variant)

    monkeypatch.setattr(sal, "saliency_mix", counting)
    m = cifar100.train(["--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--lr", "0.05",
                        "--batch_size", "64", "--schedule", "constant", "--saliencymix", "0.5",
                        "--saliencymix_variant", "reference", "--save_dir", str(tmp_path), "--no_progress"])
    assert math.isfinite(m["last_top1"]) and m["epochs"] == 1
    assert 3 <= len(calls) <= 20 and {v for v, _ in calls} == {"reference"}  # 23 batches at p 0.5
    assert all(shape[1:] == (1, 32, 32) for _, shape in calls)
    assert m["args"]["saliencymix"] == 0.5


def test_cifar100_rejects_a_bad_probability(tmp_path, capsys):
    rc = cifar100.main(["--model", "resnet8", "--dataset", "digits", "--saliencymix", "1.5",
                        "--save_dir", str(tmp_path)])
    assert rc == 2 and "--saliencymix 1.5" in capsys.readouterr().err
