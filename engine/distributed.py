"""Data-parallel runs on PyTorch's own stack: ``torchrun`` + ``torch.distributed`` (NCCL for CUDA
tensors, gloo for CPU tensors).

Launched by ``torchrun --nproc_per_node N <entry script> ...`` (or multi-node with torchrun's
rendezvous flags), every entry script joins the process group in :func:`setup` before it reads
its command line, and the rest of the engine asks :func:`current` where it runs:

* each rank reads its shard of the training set (``engine.data.TensorLoader`` with
  ``DistributedSampler`` semantics: one shuffle shared by all ranks, padded to a multiple of the
  world size, rank ``r`` takes every ``world_size``-th sample from ``r``) and of the test set;
* ``--batch_size`` is per process, so the global batch is ``world_size x batch_size``;
* the trainer averages the gradients of every trainable parameter over the ranks after each
  backward (one all-reduce of one flat buffer per step: DDP's averaging with one bucket) and
  keeps rank 0's BatchNorm buffers (as DDP's ``broadcast_buffers``); so all ranks hold the same
  weights, and a step over N x B samples equals one process's step over those N x B samples
  when the model has no BatchNorm in train mode (per-rank statistics otherwise, as DDP without
  SyncBatchNorm);
* data-free synthesis runs on the global batch: :func:`global_moments` merges every rank's
  BatchNorm statistics in one differentiable all-reduce (the teacher's BN-statistics loss,
  :class:`GlobalBatchNorm2d` in the generator), and the synthesizers average their generator
  gradients (``datafree.base.Synthesizer.sync_grads``);
* evaluation is sharded and its counts are summed over the ranks;
* only rank 0 writes: logs, TensorBoard, ``metrics.json``, checkpoints, results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from engine.utils import at_least_fp32


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> DistContext:
    """Join the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); a single process does nothing."""
    if launched() and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return current()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistContext:
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (unchanged in a single process)."""
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _to_plain(o):
    """Tensors as (bytes, dtype, shape), so an object crosses ``all_gather_object`` as plain data
    (a pickled tensor is rebuilt through ``torch.load``, which refuses it there)."""
    if isinstance(o, torch.Tensor):
        t = o.detach().cpu().contiguous()
        return ("__tensor__", t.numpy().tobytes(), str(t.dtype).split(".")[-1], tuple(t.shape))
    if isinstance(o, dict):
        return {k: _to_plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return type(o)(_to_plain(v) for v in o)
    return o


def _from_plain(o):
    if isinstance(o, tuple) and len(o) == 4 and o[0] == "__tensor__":
        _, data, dtype, shape = o
        return torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).reshape(shape).clone()
    if isinstance(o, dict):
        return {k: _from_plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return type(o)(_from_plain(v) for v in o)
    return o


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    ctx = current()
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, _to_plain(obj))
    return [_from_plain(o) for o in out]


def elastic_restart() -> int:
    """How many times torchrun has restarted this job's workers (``--max-restarts``); 0 at first."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks: one all-reduce of one flat buffer."""
    ctx = current()
    if not ctx.enabled:
        return
    grads: List[torch.Tensor] = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(ctx.world_size)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def broadcast_state(modules: Iterable[torch.nn.Module], buffers_only: bool = False) -> None:
    """Rank 0's parameters (unless ``buffers_only``) and buffers, on every rank."""
    if not current().enabled:
        return
    for m in modules:
        tensors = list(m.buffers()) if buffers_only else list(m.parameters()) + list(m.buffers())
        for t in tensors:
            dist.broadcast(t.data, 0)


def rank_seed(seed: int) -> int:
    """This rank's own seed derived from ``seed`` (``seed`` itself on rank 0 and in a single process)."""
    return seed + 1_000_003 * current().rank


def rank_generator(device) -> "torch.Generator | None":
    """Under torchrun, a random generator of this rank's own (seeded from the global seed and the
    rank), for draws that must differ between ranks before the trainer gives each rank its own
    stream; ``None`` (the global RNG) in a single process."""
    if not current().enabled:
        return None
    return torch.Generator(device).manual_seed(rank_seed(torch.initial_seed()))


def shard(order: torch.Tensor, pad: bool) -> torch.Tensor:
    """This rank's share of ``order``: every ``world_size``-th element from ``rank``; with
    ``pad``, first padded (by repeating its start) to a multiple of the world size, so every rank
    gets as many (``DistributedSampler``'s rule)."""
    ctx = current()
    if not ctx.enabled:
        return order
    if pad and len(order) % ctx.world_size:
        extra = ctx.world_size - len(order) % ctx.world_size
        order = torch.cat([order, order[:extra]])
    return order[ctx.rank::ctx.world_size]


# -- the global batch of data-free synthesis ------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the incoming gradient too: the gradient of
    sum_r x_r with respect to this rank's x_r, when every rank's loss uses the sum, is the sum of
    the ranks' gradients. The backward is itself this function, so a second-order graph
    (``create_graph=True``) stays differentiable."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``sum_r t_r`` over the ranks, differentiably (``t`` itself in a single process)."""
    return _SumOverRanks.apply(t) if current().enabled else t


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The ranks' mean of a detached value (a loss to log or compare); ``t`` in a single process."""
    ctx = current()
    return all_reduce_sum(t.detach().clone()).div_(ctx.world_size) if ctx.enabled else t


def channel_moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of an N x C x H x W batch (in fp32 for half inputs)."""
    x = at_least_fp32(x)
    return x.mean(dim=(0, 2, 3)), x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)


def global_moments(stats: Sequence[Tuple[torch.Tensor, torch.Tensor]], counts: Sequence[int]
                   ) -> List[Tuple[torch.Tensor, torch.Tensor, float]]:
    """Per-channel mean and biased variance over the global batch from every rank's own
    ``(mean, var)`` of ``counts`` values per channel, for several layers in one differentiable
    all-reduce: the pooled moments sum_r n_r mu_r, sum_r n_r var_r and sum_r n_r mu_r^2 give
    mu = S1 / N and var = (S2 + S3) / N - mu^2 (the parallel-variance combination, which
    subtracts squared means, not squared values). Returns ``(mean, var, N)`` per layer; in a
    single process the inputs unchanged."""
    if not current().enabled:
        return [(m, v, float(n)) for (m, v), n in zip(stats, counts)]
    parts = []
    for (m, v), n in zip(stats, counts):
        parts += [n * m, n * v, n * m * m]
    ref = stats[0][0]
    parts.append(torch.tensor([float(n) for n in counts], device=ref.device, dtype=ref.dtype))
    flat = sum_over_ranks(torch.cat(parts))
    sizes = [len(m) for m, _ in stats for _ in range(3)] + [len(counts)]
    pieces = list(torch.split(flat, sizes))
    totals = pieces[-1].detach().tolist()
    out = []
    for i, total in enumerate(totals):
        s1, s2, s3 = pieces[3 * i: 3 * i + 3]
        mean = s1 / total
        out.append((mean, ((s2 + s3) / total - mean * mean).clamp_min(0.0), total))
    return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the global batch over every
    rank (:func:`global_moments`, differentiable), on gloo and NCCL alike (``nn.SyncBatchNorm``
    runs on CUDA only). Eval mode, and a single process, are plain ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and current().enabled):
            return super().forward(x)
        (mean, var, total), = global_moments([channel_moments(x)], [x.numel() // x.shape[1]])
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * total / max(total - 1, 1), alpha=m)
        y = (at_least_fp32(x) - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a :class:`GlobalBatchNorm2d` holding the
    same parameters and buffers (returned as is in a single process)."""
    if not current().enabled:
        return module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        held = next(iter(module.state_dict().values()), None)
        return new.train(module.training).to(held.device if held is not None else "cpu")
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module
