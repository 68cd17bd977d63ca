"""Hinton KD and AT against formulas written out element by element."""
import math

import pytest
import torch

from kd.distillers.attention import at_loss, attention_map
from kd.losses import kd_kl_div

pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    z = sum(e)
    return [v / z for v in e]


def test_kd_is_kl_teacher_to_student_summed_over_classes_over_batch_times_t_squared():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
    T = 4.0
    per_sample = []
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = _softmax(srow, T), _softmax(trow, T)
        per_sample.append(sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt)))  # KL(p_t || p_s)
    expected = sum(per_sample) / len(per_sample) * T * T
    assert kd_kl_div(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    # these logits tell the two KL directions apart, so a swapped direction would fail above
    reverse = sum(sum(p * (math.log(p) - math.log(q)) for p, q in zip(_softmax(a, T), _softmax(b, T)))
                  for a, b in zip(s.tolist(), t.tolist())) / 2 * T * T
    assert abs(expected - reverse) > 1e-3


def test_attention_map_is_the_channel_mean_of_squares_l2_normalised():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2) / 10
    q = attention_map(f)
    for b in range(2):
        raw = [sum(f[b, c, i, j].item() ** 2 for c in range(3)) / 3 for i in range(2) for j in range(2)]
        norm = math.sqrt(sum(v * v for v in raw))
        assert q[b].tolist() == pytest.approx([v / norm for v in raw], rel=1e-6)


def test_at_loss_pools_the_larger_map_and_averages_squared_differences():
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(2, 4, 4, 4, generator=g)  # larger map: pooled to 2x2
    f_t = torch.randn(2, 8, 2, 2, generator=g)
    pooled = torch.zeros(2, 4, 2, 2)
    for i in range(2):
        for j in range(2):
            pooled[:, :, i, j] = f_s[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3))
    diffs = []
    for b in range(2):
        qs = [sum(pooled[b, c, i, j].item() ** 2 for c in range(4)) / 4 for i in range(2) for j in range(2)]
        qt = [sum(f_t[b, c, i, j].item() ** 2 for c in range(8)) / 8 for i in range(2) for j in range(2)]
        ns, nt = math.sqrt(sum(v * v for v in qs)), math.sqrt(sum(v * v for v in qt))
        diffs += [(a / ns - c / nt) ** 2 for a, c in zip(qs, qt)]
    assert at_loss(f_s, f_t).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-5)
    assert at_loss(f_t, f_s).item() == pytest.approx(at_loss(f_s, f_t).item(), rel=1e-6)  # symmetric in pooling
