"""SaliencyMix: paste the salient region of one image into another (Uddin et al., ICLR 2021).

Paper: A. F. M. Shahab Uddin, Mst. Sirazam Monira, Wheemyung Shin, TaeChoong Chung and
Sung-Ho Bae, "SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better
Regularization", ICLR 2021 (Sec. 3, Eqs. 1-4). Reference: ``afm-shahab-uddin/SaliencyMix``,
``SaliencyMix_CIFAR/saliencymix.py`` (``saliency_bbox`` and its training loop).

What one mixed batch is (reference defaults: probability 0.5 per batch, Beta(1, 1)):

1. draw lambda ~ Beta(beta, beta) and a random permutation ``perm`` of the batch;
2. take the saliency map of the SOURCE image ``x[perm[i]]`` and its arg-max (r, c);
3. a box of ``int(H * sqrt(1 - lambda))`` x ``int(W * sqrt(1 - lambda))`` pixels centred on
   (r, c): rows ``[r - hh, r + hh)`` and columns ``[c - hw, c + hw)`` with ``hh, hw`` half those
   sides (integer division, as the reference), each end clamped to the image, so a box at a
   border is cut, not shifted;
4. the box's pixels of target ``i`` are replaced by those of ``x[perm[i]]``;
5. lambda is recomputed as ``1 - box area / (H * W)``; the loss is
   ``lambda * CE(y) + (1 - lambda) * CE(y[perm])``.

:class:`SaliencyMix` yields that loss's labels as soft targets
``lambda * onehot(y) + (1 - lambda) * onehot(y[perm])`` (each row sums to 1), for which
``F.cross_entropy(logits, targets)`` is exactly the mix of the two cross-entropies (per
sample, so the batch mean is the mean of the per-sample mixes). Batches that are not mixed keep
their hard labels. Methods that need class indices use ``kd.distillers.hard_labels``.

Two variants:

* ``reference``: the reference's form. The saliency of ONE image (``x[perm[0]]``, the source of
  the first target) gives one box, pasted at the same place into every image of the batch;
  one lambda for the batch.
* ``batched`` (default; the per-sample variant the notes ask to keep separate): every target
  gets the box around the salient point of its own source image, so lambda is per sample
  (boxes cut at a border are smaller). Saliency, arg-max, boxes and the paste are tensor ops on
  the batch's device (masks from broadcast comparisons), with no host sync and no loop over
  images. The reference instead runs OpenCV on the CPU for one image per batch.

Saliency map (:func:`fine_grained_saliency`). OpenCV's ``StaticSaliencyFineGrained``
(opencv-contrib ``saliency`` module) implements Montabone & Soto, "Human detection using a
mobile platform and novel features derived from a visual saliency mechanism", Image and
Vision Computing 28(3), 2010: a grey-level image, smoothed twice with a 3x3 Gaussian, and for
each pixel and each of six surround sizes (half-widths 12, 24, 48, 28, 56, 112 pixels) the
difference between the pixel ("center") and the mean of its surround window (a box filter
from one integral image; the window covers rows ``y - n + 1 .. y + n`` and columns
``x - n + 1 .. x + n``, clipped to the image, without the center pixel). Positive differences
form the "on" map, negative ones the "off" map, both summed over the six scales and combined.
This module computes the same center-surround differences in float32 with torch, for a batch.
Its geometry was checked against opencv-contrib-python 5.0 by hand (OpenCV is not a dependency,
so this is not in the test suite): on 8-bit grey images, replaying OpenCV's 8-bit truncations
and its on/off combination on top of :func:`center_surround` and :func:`gaussian_blur3`
reproduced OpenCV's map pixel for pixel. The map used here is NOT bit-identical to OpenCV's:

* it works on the de-normalised image (``x * std + mean``, clamped to [0, 1], times 255) and
  its luma ``0.299 R + 0.587 G + 0.114 B`` (one-channel images: that channel). The reference
  hands the *normalised* float32 tensor to OpenCV; OpenCV's implementation reads the grey
  image's pixels as 8-bit values, so for a float image its map is the byte pattern of the floats
  (checked with opencv-contrib-python 5.0: a period-4 pattern along each row, and a 1e-6
  relative change of the input moves the arg-max), i.e. the reference's box position is in
  effect arbitrary. Its BGR-to-grey conversion also reads the RGB tensor as BGR;
* no 8-bit rounding anywhere (OpenCV truncates every intermediate map to 0..255);
* the on and off sums are added as they are (saliency = sum over scales of
  ``|center - surround mean|``), then the map is scaled to [0, 1] per image. OpenCV rescales
  the on and the off sums separately to 0..255 before adding them (and its 8-bit sum can
  wrap), which lets the weak off-response of a dark background next to a bright object equal
  the object's own on-response: on a bright square on a dark image its arg-max lands in the
  background; here it lands on the square.

No gradients flow through the saliency (it only places the box); the paste itself is a
``torch.where`` on the images.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

# OpenCV's six surround half-widths: 3*4*{1, 2, 4} and 7*4*{1, 2, 4}.
FINE_GRAINED_SCALES: Tuple[int, ...] = (12, 24, 48, 28, 56, 112)
LUMA_RGB: Tuple[float, float, float] = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's RGB2GRAY
VARIANTS = ("batched", "reference")


# ------------------------------------------------------------------------------ saliency map
def intensity_image(x: torch.Tensor, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Grey level in 0..255 (``B x H x W``) of normalised images ``x`` (``B x C x H x W``).

    ``mean``/``std`` undo the normalisation (``None``: ``x`` is already in [0, 1]); three
    channels are read as RGB and combined with BT.601 luma weights, one channel is used as is,
    any other count is averaged. Per-channel Python scalars, so nothing is copied to the device
    (a host-to-device copy would wait for the queued work)."""
    x = x.detach().float()
    chans = [x[:, k] for k in range(x.shape[1])]
    if mean is not None and std is not None:
        chans = [ch * float(s) + float(m) for ch, m, s in zip(chans, mean, std)]
    chans = [ch.clamp(0.0, 1.0) for ch in chans]
    weights = LUMA_RGB if len(chans) == 3 else (1.0 / len(chans),) * len(chans)
    grey = sum(w * ch for w, ch in zip(weights, chans))
    return grey * 255.0


def gaussian_blur3(grey: torch.Tensor) -> torch.Tensor:
    """One 3x3 Gaussian smoothing of ``B x H x W`` maps: OpenCV's ``GaussianBlur(ksize 3,
    sigma 0)`` kernel ``[1, 2, 1] / 4`` in each direction, mirrored border (``BORDER_REFLECT_101``,
    torch's ``reflect``). Images narrower than 2 pixels are returned unchanged."""
    if min(grey.shape[-2:]) < 2:
        return grey
    g = F.pad(grey[:, None], (1, 1, 1, 1), mode="reflect")[:, 0]
    g = 0.25 * g[:, :, :-2] + 0.5 * g[:, :, 1:-1] + 0.25 * g[:, :, 2:]
    return 0.25 * g[:, :-2] + 0.5 * g[:, 1:-1] + 0.25 * g[:, 2:]


def _window_ends(size: int, scales: Sequence[int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of every pixel's surround window along one axis, per scale:
    ``[p - n + 1, p + n + 1)`` clipped to ``[0, size]`` (``S x size`` each)."""
    p = torch.arange(size, device=device)  # built on the device: no host-to-device copy
    return (torch.stack([(p - n + 1).clamp(0, size) for n in scales]),
            torch.stack([(p + n + 1).clamp(0, size) for n in scales]))


def center_surround(grey: torch.Tensor, scales: Sequence[int] = FINE_GRAINED_SCALES) -> torch.Tensor:
    """``center - mean(surround)`` for every pixel of ``grey`` (``B x H x W``) at every scale
    (``B x S x H x W``). The surround of scale ``n`` is the box of rows ``y-n+1 .. y+n`` and
    columns ``x-n+1 .. x+n`` clipped to the image, minus the center pixel. Its sum is read off
    cumulative sums, as from OpenCV's integral image, but one axis at a time: window sums along
    the rows first, then along the columns (two contiguous look-ups per axis instead of a 2-D
    gather, which is much faster on CPU)."""
    b, h, w = grey.shape
    s = len(scales)
    # Differences to the surround are unchanged by a constant shift: centring each image keeps
    # the float32 cumulative sums small, so the window differences do not lose precision.
    grey = grey.float() - grey.float().mean((1, 2), keepdim=True)
    r0, r1 = _window_ends(h, scales, grey.device)  # (S, H)
    c0, c1 = _window_ends(w, scales, grey.device)  # (S, W)
    rows_cum = F.pad(grey.cumsum(1), (0, 0, 1, 0))  # (B, H+1, W)
    row_sums = (rows_cum.index_select(1, r1.flatten()) - rows_cum.index_select(1, r0.flatten())).view(b, s, h, w)
    cols_cum = F.pad(row_sums.cumsum(3), (1, 0))  # (B, S, H, W+1)
    box = (cols_cum.gather(3, c1.view(1, s, 1, w).expand(b, s, h, w))
           - cols_cum.gather(3, c0.view(1, s, 1, w).expand(b, s, h, w)))  # (B, S, H, W)
    count = ((r1 - r0).view(1, s, h, 1) * (c1 - c0).view(1, s, 1, w) - 1).clamp(min=1)  # center excluded
    centre = grey[:, None]
    surround_mean = (box - centre) / count
    return centre - surround_mean


def fine_grained_saliency(x: torch.Tensor, mean: Optional[Sequence[float]] = None,
                          std: Optional[Sequence[float]] = None,
                          scales: Sequence[int] = FINE_GRAINED_SCALES) -> torch.Tensor:
    """Center-surround saliency of a batch of (normalised) images, ``B x H x W`` in [0, 1].

    Grey level (:func:`intensity_image`), two 3x3 Gaussian smoothings, then the sum over
    ``scales`` of the on (``center > surround``) and off (``center < surround``) differences,
    i.e. of ``|center - surround mean|``, divided by each image's maximum (a flat image gives
    zeros). See the module docstring for how this relates to OpenCV's
    ``StaticSaliencyFineGrained`` (same algorithm, not bit-identical)."""
    with torch.no_grad():
        grey = gaussian_blur3(gaussian_blur3(intensity_image(x, mean, std)))
        sal = center_surround(grey, scales).abs().sum(1)  # on + off: max(d, 0) + max(-d, 0) = |d|
        peak = sal.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
        return sal / peak


def saliency_peak(saliency: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each map's maximum (``B x H x W`` -> two ``B`` long tensors; ties go
    to the first pixel in row-major order, like ``np.argmax``)."""
    w = saliency.shape[-1]
    flat = saliency.flatten(1).argmax(1)
    return flat // w, flat % w


# ------------------------------------------------------------------------------ boxes and mixing
def box_half_sides(lam: float, height: int, width: int) -> Tuple[int, int]:
    """Half-sides of the pasted box for ``lam``: ``int(side * sqrt(1 - lam)) // 2`` (the
    reference's ``cut_w // 2``), for rows and columns."""
    cut = math.sqrt(max(0.0, 1.0 - float(lam)))
    return int(height * cut) // 2, int(width * cut) // 2


def salient_boxes(rows: torch.Tensor, cols: torch.Tensor, lam: float, height: int, width: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes centred on ``(rows, cols)``: ``(r0, r1, c0, c1)`` with rows ``[r0, r1)`` and
    columns ``[c0, c1)``, each end clamped to the image (the box is cut at a border)."""
    hh, hw = box_half_sides(lam, height, width)
    return ((rows - hh).clamp(0, height), (rows + hh).clamp(0, height),
            (cols - hw).clamp(0, width), (cols + hw).clamp(0, width))


def box_masks(r0: torch.Tensor, r1: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor,
              height: int, width: int) -> torch.Tensor:
    """Boolean ``N x H x W`` masks of the boxes (broadcast comparisons, no loop)."""
    r = torch.arange(height, device=r0.device).view(1, -1, 1)
    c = torch.arange(width, device=r0.device).view(1, 1, -1)
    inside_rows = (r >= r0.view(-1, 1, 1)) & (r < r1.view(-1, 1, 1))
    inside_cols = (c >= c0.view(-1, 1, 1)) & (c < c1.view(-1, 1, 1))
    return inside_rows & inside_cols


def mixed_targets(y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, num_classes: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``lam * onehot(y_a) + (1 - lam) * onehot(y_b)`` (``B x num_classes``; ``lam`` per sample)."""
    b = y_a.shape[0]
    one_a = torch.zeros(b, num_classes, device=y_a.device, dtype=dtype).scatter_(1, y_a.view(-1, 1), 1.0)
    one_b = torch.zeros(b, num_classes, device=y_a.device, dtype=dtype).scatter_(1, y_b.view(-1, 1), 1.0)
    lam = lam.to(dtype).view(-1, 1)
    return lam * one_a + (1.0 - lam) * one_b


def saliency_mix(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 variant: str = "batched") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SaliencyMix of a batch for a given permutation and drawn ``lam``.

    Returns the mixed images, the soft targets and the per-sample lambda actually used
    (``1 - box area / image area``). ``batched``: target ``i`` gets the box around the salient
    point of its source ``x[perm[i]]``; ``reference``: the box around the salient point of
    ``x[perm[0]]`` is pasted into every target."""
    if variant not in VARIANTS:
        raise ValueError(f"SaliencyMix variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    b, _, h, w = x.shape
    if variant == "batched":
        rows, cols = saliency_peak(fine_grained_saliency(x, mean, std))
        rows, cols = rows[perm], cols[perm]  # each target's box sits on its source's salient point
    else:
        rows, cols = saliency_peak(fine_grained_saliency(x[perm[:1]], mean, std))
    r0, r1, c0, c1 = salient_boxes(rows, cols, lam, h, w)
    mask = box_masks(r0, r1, c0, c1, h, w)  # (B or 1, H, W)
    mixed = torch.where(mask[:, None], x[perm], x)
    area = ((r1 - r0) * (c1 - c0)).to(torch.float32)
    lam_used = (1.0 - area / float(h * w)).expand(b)
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    return mixed, mixed_targets(y, y[perm], lam_used, num_classes, dtype), lam_used


# ------------------------------------------------------------------------------ sampling
def sample_gamma(shape: float, generator: torch.Generator) -> float:
    """One Gamma(shape, 1) draw from a CPU ``generator`` (Marsaglia & Tsang 2000, with the
    ``U ** (1 / shape)`` boost for ``shape < 1``)."""
    boost = 1.0
    if shape < 1.0:
        boost = float(torch.rand((), generator=generator)) ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn((), generator=generator))
        v = (1.0 + c * z) ** 3
        if v <= 0.0:
            continue
        u = float(torch.rand((), generator=generator))
        if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost


def sample_beta(a: float, b: float, generator: torch.Generator) -> float:
    """One Beta(a, b) draw from a CPU ``generator`` (ratio of two Gamma draws)."""
    ga, gb = sample_gamma(a, generator), sample_gamma(b, generator)
    return ga / (ga + gb) if ga + gb > 0 else 0.5


# ------------------------------------------------------------------------------ batch source
class SaliencyMix:
    """Batch source that applies SaliencyMix to the batches of ``loader``.

    ``loader`` yields ``(x, y)`` or ``(x, y, index)`` with ``x`` normalised (``mean``/``std``)
    images. With probability ``p`` per batch the batch is mixed (see the module docstring) and
    its labels become ``B x num_classes`` soft targets; otherwise it is yielded unchanged (hard
    labels). The index, when present, is passed through.

    Randomness: a CPU generator draws the per-batch coin and lambda (host values, so no device
    sync) and a generator on the batch's device draws the permutation. Both are seeded from
    ``seed`` (default: ``torch.initial_seed()``, i.e. the run's ``--seed``) and saved in
    :meth:`state_dict` with the wrapped loader's state, so a resumed run mixes exactly as an
    uninterrupted one. ``__len__``, ``set_epoch``, ``num_samples`` and ``labels_cpu`` are the
    wrapped loader's.
    """

    def __init__(self, loader, p: float = 0.5, variant: str = "batched", num_classes: int = 100,
                 beta: float = 1.0, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"SaliencyMix probability {p}: expected a value in [0, 1]")
        if variant not in VARIANTS:
            raise ValueError(f"SaliencyMix variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
        if beta <= 0:
            raise ValueError(f"SaliencyMix beta {beta}: expected > 0 (lambda ~ Beta(beta, beta))")
        self.loader, self.p, self.variant, self.num_classes, self.beta = loader, float(p), variant, num_classes, beta
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.seed = int(torch.initial_seed() if seed is None else seed) % (2 ** 63)
        self.generator = torch.Generator().manual_seed(self.seed)  # coin and lambda (CPU)
        self._perm_generator: Optional[torch.Generator] = None  # permutation, on the batch's device
        self._pending_perm_state: Optional[Tuple[str, torch.Tensor]] = None

    # -- the wrapped loader's interface
    @property
    def resumable_mid_epoch(self) -> bool:
        return getattr(self.loader, "resumable_mid_epoch", False)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    @property
    def labels_cpu(self) -> torch.Tensor:
        return self.loader.labels_cpu

    # -- randomness
    def _perm_gen(self, device: torch.device) -> torch.Generator:
        if self._perm_generator is None or self._perm_generator.device.type != device.type:
            gen = torch.Generator(device=device).manual_seed(self.seed + 1)
            if self._pending_perm_state is not None:
                saved_type, state = self._pending_perm_state
                if saved_type == device.type:
                    gen.set_state(state)
                else:
                    warnings.warn(f"SaliencyMix: the saved permutation RNG is for {saved_type}, the batches are "
                                  f"on {device.type}; reseeding it", stacklevel=3)
                self._pending_perm_state = None
            self._perm_generator = gen
        return self._perm_generator

    def mix(self, batch):
        """The batch after one coin flip: mixed (soft labels) or unchanged."""
        if not float(torch.rand((), generator=self.generator)) < self.p:
            return batch
        x, y, *rest = batch
        lam = sample_beta(self.beta, self.beta, self.generator)
        perm = torch.randperm(x.shape[0], device=x.device, generator=self._perm_gen(x.device))
        mixed, targets, _ = saliency_mix(x, y, perm, lam, self.num_classes, self.mean, self.std, self.variant)
        return (mixed, targets, *rest)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            yield self.mix(batch)

    # -- checkpoints
    def state_dict(self) -> dict:
        perm = None
        if self._perm_generator is not None:
            perm = {"device": self._perm_generator.device.type, "state": self._perm_generator.get_state()}
        elif self._pending_perm_state is not None:
            perm = {"device": self._pending_perm_state[0], "state": self._pending_perm_state[1]}
        return {"generator": self.generator.get_state(), "perm_generator": perm,
                "loader": self.loader.state_dict() if hasattr(self.loader, "state_dict") else None}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        perm = state.get("perm_generator")
        self._perm_generator = None
        self._pending_perm_state = (perm["device"], perm["state"]) if perm else None
        if state.get("loader") is not None and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["loader"])


__all__ = ["SaliencyMix", "saliency_mix", "fine_grained_saliency", "saliency_peak", "salient_boxes",
           "box_masks", "mixed_targets", "center_surround", "intensity_image", "gaussian_blur3",
           "sample_beta", "FINE_GRAINED_SCALES"]
