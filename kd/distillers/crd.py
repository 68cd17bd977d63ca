"""CRD: contrastive representation distillation (Tian et al., "Contrastive Representation
Distillation", ICLR 2020, the NCE bound of Eq. 18; reference ``HobbitLong/RepDistiller``
``crd/criterion.py``, ``crd/memory.py`` and ``dataset/cifar100.py::CIFAR100InstanceSample``).

* **Embeddings.** The pooled features of both nets go through ``Embed`` (Linear to
  ``feat_dim`` = 128, then L2-normalise); both heads are trainable (RD adds ``embed_s`` and
  ``embed_t`` to its ``trainable_list``).
* **Memory.** :class:`ContrastMemory` holds two ``n_data x feat_dim`` buffers, one of student
  and one of teacher embeddings, initialised uniform in ``[-stdv, stdv]`` with
  ``stdv = 1/sqrt(feat_dim/3)`` (rows of expected squared norm 1, as RD). After the scores of
  a batch are computed, the rows of the batch's own samples are set to
  ``normalize(nce_m * row + (1 - nce_m) * embedding)`` (``nce_m`` 0.5).
* **Scores.** For the student anchor ``v_s``: ``P = exp(v_s . m_t[j] / nce_t) / Z_s`` over
  the ``K + 1`` teacher-memory rows ``j`` (one positive, ``K = nce_k`` negatives); the teacher
  anchor likewise against the student memory with ``Z_t``. Each ``Z`` is fixed on the first
  batch to ``mean(exp scores) * n_data`` (RD's ``params[2:4]``, set once when negative); here
  ``Z`` is a buffer initialised to -1 and set with ``torch.where`` on the device, so no step
  syncs with the host.
* **Loss (Eq. 18).** With noise probability ``P_n = 1/n_data``:
  ``L = -(1/B) sum_b [log(P+ / (P+ + K P_n + eps)) + sum_neg log(K P_n / (P- + K P_n + eps))]``,
  ``eps`` 1e-7, for both anchors: ``crd_s`` (student anchor) and ``crd_t`` (teacher anchor);
  RD's loss is their sum.

**Contrast indices** (RD's ``--mode``, here the option ``crd_mode``). Read from
``CIFAR100InstanceSample.__getitem__``: in *both* modes the ``K`` negatives are drawn from the
samples of the *other* classes (``cls_negative[target]``); the modes differ only in the
positive. ``exact`` (RD's default): the positive is the anchor sample itself. ``relax``: the
positive is a random sample of the anchor's class (possibly itself). So the notes' one-line
summary ("relax draws from any sample") is not what RD's dataset does; uniform draws over all
samples happen only in ``ContrastMemory`` when no contrast indices are given, which
``train_student.py`` never does for CRD. In both modes the memory update writes the anchor's
own row.

Deviations, both on purpose:

* the indices are drawn on the device in the step, not per sample on the CPU in the dataset:
  other-class negatives are drawn uniformly **with replacement**
  from the complement of the anchor's class block of a class-sorted index table (O(1) per
  draw). RD draws without replacement when ``K`` is at most the number of other-class
  samples; i.i.d. draws are the noise distribution NCE assumes, and duplicates only repeat a
  noise sample.
* the CRD head (embeddings, scores, loss) runs in float32 even under autocast: the scores
  reach ``exp(1/0.07) ~ 1.6e6``, beyond float16.

Under torchrun (RD runs one process): every step writes every rank's anchors into the memory
banks (an all-gather of the embeddings and indices), so all ranks hold the same banks, as one
process over the global batch would; ``Z`` is fixed from the scores' mean over every rank's
batch. Each rank draws its own negatives.

The anchor's class comes from the training labels (``DataInfo.labels``, loader index order),
not from the batch labels, so mixed (SaliencyMix) targets do not matter. Batches must carry
the sample index (``needs_index``).

Defaults: RD ``scripts/run_cifar_distill.sh``: ``-r 1 -a 0 -b 0.8``; CRD+KD is ``-a 1 -b 0.8``
(RD's README), i.e. ``--distill crd -a 1``. ``feat_dim`` 128, ``nce_k`` 16384, ``nce_t`` 0.07, ``nce_m`` 0.5,
``crd_mode`` exact (RD's ``train_student.py`` defaults; RD's ``--mode exact|relax`` sets it).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers._modules import Embed
from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller

CRD_MODES = ("exact", "relax")
NCE_EPS = 1e-7


def nce_loss(scores: torch.Tensor, n_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """Eq. 18 on normalised scores ``(B, K + 1)``, column 0 the positive: the NCE loss with noise
    probability ``1/n_data``, summed over the ``K + 1`` pairs and averaged over the batch."""
    k = scores.shape[1] - 1
    noise = k / float(n_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


def contrast_scores(memory: torch.Tensor, anchor: torch.Tensor, idx: torch.Tensor, nce_t: float) -> torch.Tensor:
    """``exp(memory[idx[b, j]] . anchor[b] / nce_t)``, shape ``(B, K + 1)``; the memory rows
    are constants (no gradient), the anchor gets one."""
    rows = memory.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], -1)
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / nce_t)


@torch.no_grad()
def fix_normaliser(z: torch.Tensor, scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """RD's ``Z``: set once (while the buffer ``z`` is negative) to ``mean(scores) * n_data``,
    then kept; returns the value in use. Runs on the device: no host sync."""
    z.copy_(torch.where(z < 0, scores.mean() * n_data, z))
    return z.clone()


def _global_mean(scores: torch.Tensor) -> torch.Tensor:
    """Under torchrun, the scores' mean over every rank's batch (a 1-element tensor whose mean
    is that value), so every rank fixes the same ``Z``; ``scores`` itself in a single process."""
    from engine import distributed

    ctx = distributed.current()
    if not ctx.enabled:
        return scores
    return (distributed.all_reduce_sum(scores.mean().reshape(1)) / ctx.world_size)


def _from_every_rank(*tensors: torch.Tensor):
    """Under torchrun, each tensor concatenated over the ranks (equal batch sizes: the samplers
    pad every shard alike), so every rank writes every rank's rows into its memory bank and the
    banks stay identical; the tensors themselves in a single process."""
    from engine import distributed

    ctx = distributed.current()
    if not ctx.enabled:
        return tensors
    import torch.distributed as dist

    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
        dist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


@torch.no_grad()
def update_memory(memory: torch.Tensor, embedding: torch.Tensor, index: torch.Tensor, momentum: float) -> None:
    """``memory[index] <- normalize(momentum * memory[index] + (1 - momentum) * embedding)``."""
    mixed = memory.index_select(0, index).mul_(momentum).add_(embedding.detach(), alpha=1.0 - momentum)
    memory.index_copy_(0, index, F.normalize(mixed, dim=1))


def _uniform_below(high: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (``high`` broadcast over ``shape``), on its device.
    (A 62-bit draw reduced modulo ``high``: the bias is below 2^-40 for any dataset.)"""
    return torch.randint(0, 2 ** 62, shape, device=high.device) % high


class ContrastMemory(nn.Module):
    """CRD's memory bank and the class tables of the training set.

    Persistent buffers (saved in checkpoints, moved by ``.to``): ``memory_s`` / ``memory_t``
    (``n_data x feat_dim`` student / teacher embeddings) and ``z_s`` / ``z_t`` (the fixed
    normalisers, -1 until the first batch). Non-persistent buffers, rebuilt from the labels:
    ``labels`` (class of every sample), ``by_class`` (sample indices sorted by class),
    ``class_start`` / ``class_count`` (each class's block in ``by_class``).
    """

    def __init__(self, feat_dim: int, labels: torch.Tensor):
        super().__init__()
        labels = torch.as_tensor(labels).long().flatten().cpu()
        n_data = labels.numel()
        num_classes = int(labels.max()) + 1 if n_data else 0
        counts = torch.bincount(labels, minlength=num_classes)
        if n_data == 0 or int(counts.max()) == n_data:
            raise ValueError(f"CRD draws its negatives from other classes; the {n_data} training labels "
                             "hold fewer than two classes")
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.n_data = n_data
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.full((), -1.0))
        self.register_buffer("z_t", torch.full((), -1.0))
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)

    def contrast_indices(self, index: torch.Tensor, k: int, mode: str) -> torch.Tensor:
        """``(B, K + 1)`` memory rows per anchor: column 0 the positive (the anchor itself in
        ``exact`` mode, a uniform same-class sample in ``relax`` mode), then ``k`` negatives
        drawn uniformly, with replacement, from the samples of the other classes."""
        if mode not in CRD_MODES:
            raise ValueError(f"crd_mode must be one of {', '.join(CRD_MODES)}; got {mode!r}")
        cls = self.labels[index]
        start = self.class_start[cls].unsqueeze(1)
        count = self.class_count[cls].unsqueeze(1)
        # a uniform position in the complement of the class block [start, start + count)
        u = _uniform_below(self.n_data - count, (index.shape[0], k))
        negatives = self.by_class[u + count * (u >= start)]
        if mode == "exact":
            positive = index.unsqueeze(1)
        else:
            positive = self.by_class[start + _uniform_below(count, (index.shape[0], 1))]
        return torch.cat([positive, negatives], dim=1)


def _fp32(device: torch.device):
    """A context without autocast on ``device`` (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device.type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


@register_distiller("crd")
class CRD(Distiller):
    taps = ("pool",)
    weights = Weights(r=1.0, a=0.0, b=0.8)
    needs_index = True

    @dataclass
    class Options:
        feat_dim: int = option(128, "CRD/contrastive heads: embedding dimension")
        nce_k: int = option(16384, "CRD: negatives per anchor")
        nce_t: float = option(0.07, "CRD: temperature of the scores")
        nce_m: float = option(0.5, "CRD: momentum of the memory update")
        crd_mode: str = option("exact", "CRD: positives exact (the sample itself) or relax (a random "
                                        "same-class sample); negatives from other classes in both; "
                                        "RepDistiller's --mode exact|relax")

    def setup(self) -> None:
        if self.opts.crd_mode not in CRD_MODES:
            raise ValueError(f"crd_mode must be one of {', '.join(CRD_MODES)}; got {self.opts.crd_mode!r}")
        if self.data.labels is None or not self.data.num_samples:
            raise ValueError("crd needs the training set's size and labels (DataInfo.num_samples, .labels)")
        if len(self.data.labels) != self.data.num_samples:
            raise ValueError(f"crd: {len(self.data.labels)} labels for {self.data.num_samples} samples")
        (s_shape,), (t_shape,) = self.s_shape("pool"), self.t_shape("pool")
        self.embed_s = Embed(math.prod(s_shape[1:]), self.opts.feat_dim)
        self.embed_t = Embed(math.prod(t_shape[1:]), self.opts.feat_dim)
        self.memory = ContrastMemory(self.opts.feat_dim, self.data.labels)

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"crd_embed_s": self.embed_s, "crd_embed_t": self.embed_t, "crd_memory": self.memory}

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        if out.index is None:
            raise ValueError("crd needs batches (x, y, index) with each sample's index in the training set")
        f_s, f_t = out.s_feats("pool")[0], out.t_feats("pool")[0]
        mem, o = self.memory, self.opts
        index = out.index.to(mem.memory_s.device).long()
        with _fp32(f_s.device):
            v_s = self.embed_s(f_s.float())
            v_t = self.embed_t(f_t.float())
            idx = mem.contrast_indices(index, o.nce_k, o.crd_mode)
            score_s = contrast_scores(mem.memory_t, v_s, idx, o.nce_t)  # student anchor, teacher memory
            score_t = contrast_scores(mem.memory_s, v_t, idx, o.nce_t)  # teacher anchor, student memory
            p_s = score_s / fix_normaliser(mem.z_s, _global_mean(score_s.detach()), mem.n_data)
            p_t = score_t / fix_normaliser(mem.z_t, _global_mean(score_t.detach()), mem.n_data)
            v_s_all, v_t_all, index_all = _from_every_rank(v_s.detach(), v_t.detach(), index)
            update_memory(mem.memory_s, v_s_all, index_all, o.nce_m)
            update_memory(mem.memory_t, v_t_all, index_all, o.nce_m)
            return {"crd_s": nce_loss(p_s, mem.n_data), "crd_t": nce_loss(p_t, mem.n_data)}
