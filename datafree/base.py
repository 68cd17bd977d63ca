"""The synthesizer interface and what the model-inversion methods share.

A synthesizer turns a teacher into training batches for a student:

* ``synthesize(epoch)`` makes one batch of images, stores it (pool or generator state) and
  returns its losses and timing;
* ``sample(n)`` returns ``n`` augmented, normalised images for a KD step.

The loss shared by fast / fast_meta / cmi (Fast-Datafree ``datafree/synthesis/fast_meta.py``) is

    L = bn * sum_l r_l  +  oh * CE(t, y)  +  adv * masked_adversarial_kl(s, t)

with the adversarial term from round ``warmup`` on for fast / fast_meta and from the first round
for cmi (``adv_active``; rounds are counted as the reference counts them, see the round clock).

with t / s the teacher / student logits on the augmented images and y sampled targets.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.losses import BNStatLoss, masked_adversarial_kl
from datafree.pool import ImagePool
from engine import distributed
from engine.data import BatchAugment, Normalize, RandomResizedCrop
from engine.utils import optimizer_impl, synchronize


@dataclass
class SynthesisConfig:
    """Settings of a synthesis run; names and defaults follow Fast-Datafree's flags."""

    num_classes: int = 10
    img_size: int = 32
    nc: int = 3
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    batch_size: int = 256  # --synthesis_batch_size
    g_steps: int = 10
    lr_g: float = 2e-3
    lr_z: float = 0.01
    nz: int = 256
    ngf: int = 64
    bn: float = 10.0
    oh: float = 0.4
    adv: float = 1.1
    act: float = 0.0
    balance: float = 0.0
    bn_mmt: float = 0.9
    is_maml: int = 1
    maml_truncate: Optional[int] = None  # is_maml 2: differentiate through the last k inner steps only
    reset_l0: bool = False
    reset_bn: bool = False
    reset_epoch: Optional[int] = None  # 1-based epoch when reset_l0/reset_bn act; None: warmup + 120 (reference)
    warmup: int = 20
    balanced_targets: bool = False
    pool_storage: str = "uint8"
    pool_capacity: Optional[int] = None
    # the pool's tiers: at most this many GB on the device, then in host memory, then a
    # memory-mapped file in pool_spill_dir (None: no limit; default spill folder <save_dir>/pool_spill)
    pool_device_gb: Optional[float] = None
    pool_host_gb: Optional[float] = None
    pool_spill_dir: Optional[str] = None
    pad: int = 4  # random-crop padding of the synthesis and KD augmentation
    flip: bool = True
    # augmentation of pool samples for KD steps: None = the synthesis augmentation (CIFAR: both are
    # crop + flip); rrc_flip = RandomResizedCrop(kd_rrc_scale) + flip (the ImageNet recipe's KD transform)
    kd_augment: Optional[str] = None
    kd_rrc_scale: Tuple[float, float] = (0.08, 1.0)
    # generator / augmentation / storage (ImageNet-size setting: deep, rrc_flip, last, meta_z)
    generator: str = "auto"  # dcgan | deep (spatial latent) | auto: deep from 128 px up
    augment: str = "crop_flip"  # crop_flip (pad + flip) | rrc_flip (RandomResizedCrop + flip)
    rrc_scale: Tuple[float, float] = (0.75, 1.0)
    keep: str = "best"  # which inner-step batch joins the pool: lowest loss, or the last one
    meta_z: bool = False  # fast_meta: a persistent, meta-learned latent batch
    lr_g_meta: Optional[float] = None  # fast_meta meta lr for G (default lr_g * g_steps)
    lr_z_meta: float = 5e-3
    z_reinit: float = 5.0  # with meta_z: re-sample the latents every this many epochs (the logged
    # ImageNet runs: every 50 rounds = 5 epochs at 10 rounds per epoch; fractions of an epoch allowed)
    reptile_scale: float = 67.0  # Fast-Datafree's CIFAR factor; its ImageNet script uses 1
    # deepinv image priors (Fast-Datafree fixes both to 0)
    tv: float = 0.0
    l2: float = 0.0
    # cmi
    cr: float = 0.8
    cr_T: float = 0.2
    bank_size: int = 40960
    n_neg: int = 4096
    head_dim: int = 256
    cmi_layers: Optional[Sequence[str]] = None  # tap specs; None: the inputs of every teacher BN
    # speed (bench/optimizations.py measures each): optimiser kernel, mixed precision of the
    # synthesis forwards (off | bf16; the reference runs fp32), torch.compile of the generator,
    # channels_last generator output (None: on for CUDA)
    opt_impl: str = "auto"
    seed: int = 0  # the pool's shuffle
    amp: str = "off"
    compile: bool = False
    channels_last: Optional[bool] = None


class BestBatch:
    """Keeps the lowest-loss batch of a round (or the last one) on the device, selecting with
    ``torch.where`` so the inner loop never waits for the host (the reference calls
    ``loss.item()`` every step; the selection is the same)."""

    def __init__(self, keep: str = "best"):
        self.keep_last = keep == "last"
        self.loss: Optional[torch.Tensor] = None
        self.tensors: Sequence[torch.Tensor] = ()

    @torch.no_grad()
    def update(self, loss: torch.Tensor, *tensors: torch.Tensor) -> None:
        """``loss`` is this rank's; under torchrun the ranks' mean (the global batch's loss) is
        compared, so every rank keeps the batch of the same inner step."""
        loss = distributed.mean_over_ranks(loss.detach())
        if self.loss is None or self.keep_last:
            self.loss, self.tensors = loss, [t.detach().clone() for t in tensors]
        else:
            better = loss < self.loss
            self.tensors = [torch.where(better, t.detach(), b) for t, b in zip(tensors, self.tensors)]
            self.loss = torch.minimum(self.loss, loss)


def sample_targets(n: int, num_classes: int, balanced: bool, device: torch.device) -> torch.Tensor:
    """Uniform random labels (the reference), or an equal share per class in random order."""
    if balanced:
        y = torch.arange(n, device=device) % num_classes
        return y[torch.randperm(n, device=device)]
    return torch.randint(num_classes, (n,), device=device)


def build_augment(cfg: SynthesisConfig, kind: Optional[str] = None,
                  scale: Optional[Tuple[float, float]] = None) -> nn.Module:
    """The differentiable augmentation applied to synthetic images (in [0, 1]) before the
    teacher sees them (``cfg.augment``), or to pool samples before KD steps (``kind`` /
    ``scale`` from ``cfg.kd_augment`` / ``cfg.kd_rrc_scale``)."""
    kind = kind or cfg.augment
    if kind == "crop_flip":
        return BatchAugment(cfg.mean, cfg.std, pad=cfg.pad, flip=cfg.flip)
    if kind == "rrc_flip":
        scale = tuple(scale or cfg.rrc_scale)
        return nn.Sequential(RandomResizedCrop((cfg.img_size, cfg.img_size), scale, cfg.flip),
                             Normalize(cfg.mean, cfg.std))
    raise ValueError(f"augment must be crop_flip or rrc_flip, got {kind!r}")


def build_generator(cfg: SynthesisConfig) -> nn.Module:
    from datafree.generator import DeepGenerator, Generator

    kind = cfg.generator if cfg.generator != "auto" else ("deep" if cfg.img_size >= 128 else "dcgan")
    if kind == "dcgan":
        return Generator(cfg.nz, cfg.ngf, cfg.img_size, cfg.nc)
    if kind == "deep":
        return DeepGenerator(cfg.nz, cfg.ngf, cfg.img_size, cfg.nc)
    raise ValueError(f"generator must be dcgan, deep or auto, got {cfg.generator!r}")


class Synthesizer:
    """Base class: holds the teacher, the student, the augmentation and the image pool."""

    uses_pool = True
    default_nz = 256  # latent size when --nz is not given
    # the student's KD loss of the published runs: "kl" at student_T (None: the caller's --T)
    # or "l1" on logits; see datafree.api.student_loss
    student_loss = "kl"
    student_T: Optional[float] = None
    adv_warmup = True  # the adversarial term only from --warmup on (fast, fast_meta; not cmi)
    # the method-specific synthesis flags this method reads (kd/faster_data_free_kd.py names any
    # other given one in a warning); every method reads g_steps, lr_g, bn, oh, adv, syn_amp, kd_loss
    reads: ClassVar[FrozenSet[str]] = frozenset()
    POOL_FLAGS: ClassVar[FrozenSet[str]] = frozenset({"pool_storage", "pool_capacity", "cmi_init", "pool_device_gb",
                                                      "pool_host_gb", "pool_spill_dir"})
    SHARED_FLAGS: ClassVar[FrozenSet[str]] = frozenset({"g_steps", "lr_g", "bn", "oh", "adv", "syn_amp", "kd_loss"})

    @classmethod
    def unused_flags(cls, given: Iterable[str], cfg: Optional["SynthesisConfig"] = None) -> List[str]:
        """Those of the ``given`` synthesis flags (``dest`` names) that this method does not read
        (with ``cfg``, also the ones its settings switch off)."""
        used = cls.reads | cls.SHARED_FLAGS | (cls.POOL_FLAGS if cls.uses_pool else frozenset())
        return sorted(f for f in given if f not in used)

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: SynthesisConfig, device: torch.device):
        self.teacher, self.student, self.cfg, self.device = teacher, student, cfg, torch.device(device)
        self.normalize = Normalize(cfg.mean, cfg.std).to(self.device)
        self.augment = build_augment(cfg).to(self.device)
        self.kd_augment = (build_augment(cfg, cfg.kd_augment, cfg.kd_rrc_scale).to(self.device)
                           if cfg.kd_augment else self.augment)
        # where the current round sits (set by the batch source before each synthesize()):
        # schedules are given in epochs and fire at exact rounds for any rounds per epoch
        self.rounds_per_epoch, self.round_in_epoch = 1, 0
        gb = lambda v: None if v is None else int(v * 2**30)  # noqa: E731
        # under torchrun each rank keeps its own pool shard, shuffled by its own stream
        self.pool = ImagePool(self.device, cfg.pool_storage, cfg.pool_capacity,
                              seed=distributed.rank_seed(cfg.seed),
                              device_bytes=gb(cfg.pool_device_gb), host_bytes=gb(cfg.pool_host_gb),
                              spill_dir=cfg.pool_spill_dir)
        self.bn_loss: Optional[BNStatLoss] = None
        if cfg.bn > 0:
            self.bn_loss = BNStatLoss(teacher, cfg.bn_mmt)
            self.bn_loss.set_enabled(False)  # on only while synthesizing, never in KD steps
        self.last_images: Optional[torch.Tensor] = None
        self.opt_kwargs = optimizer_impl(cfg.opt_impl, self.device)
        if cfg.amp not in ("off", "bf16"):
            raise ValueError(f"synthesis amp must be off or bf16 (fp16 would need loss scaling); got {cfg.amp!r}")
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"

    # -- interface --------------------------------------------------------------------
    def synthesize(self, epoch: int) -> Dict[str, float]:
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        return self.kd_augment(self.pool.sample(n))

    progress = False  # a bar over the inner steps of long rounds (set from the trainer's progress flag)
    PROGRESS_MIN_STEPS = 50  # shorter rounds finish too fast for a bar to say anything

    def inner_steps(self, steps: Iterable, total: Optional[int] = None) -> Iterable:
        """``steps``, behind a tqdm bar when progress is on and the round is long (DeepInversion's
        1,000 steps, CMI's 200); the bar reads nothing back from the device."""
        total = len(steps) if total is None else total
        if not self.progress or total < self.PROGRESS_MIN_STEPS:
            return steps
        from tqdm import tqdm

        return tqdm(steps, total=total, desc="synthesis round", unit="step", leave=False, dynamic_ncols=True)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> List[int]:
        """The teacher's class for each [0, 1] image (the labels of the image grids)."""
        was = self.teacher.training
        self.teacher.eval()
        try:
            dtype = next(self.teacher.parameters()).dtype
            logits = self.teacher(self.normalize(images.to(self.device, dtype)))
        finally:
            self.teacher.train(was)
        return logits.argmax(1).tolist()

    def learned_tensors(self) -> List[torch.Tensor]:
        """What this synthesizer learns across rounds (its generator's weights and buffers, the
        persistent latents): the batch source checks them for divergence after every round."""
        out: List[torch.Tensor] = []
        generator = getattr(self, "generator", None)
        if isinstance(generator, nn.Module):
            out += [p.detach() for p in generator.parameters()] + list(generator.buffers())
        z = getattr(self, "z", None)
        if isinstance(z, torch.Tensor):
            out.append(z.detach())
        return out

    def pop_sample_time(self) -> float:
        """Synthesis work done inside ``sample`` since the last call (generative methods)."""
        return 0.0

    # the entries of state_dict() that differ between ranks under torchrun (each rank's pool shard,
    # latents, memory bank); the rest (generator, optimisers, BN-statistics EMA) is the same on all
    RANK_STATE: ClassVar[FrozenSet[str]] = frozenset({"pool"})

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict(), "bn": self.bn_loss.state_dict() if self.bn_loss else None}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        if self.bn_loss is not None and state.get("bn") is not None:
            self.bn_loss.load_state_dict(state["bn"])

    # -- shared pieces ------------------------------------------------------------------
    def adam(self, params, lr: float, betas: Tuple[float, float]) -> torch.optim.Adam:
        """Adam with the configured kernel (fused by default on CPU and CUDA)."""
        return torch.optim.Adam(params, lr=lr, betas=betas, **self.opt_kwargs)

    def autocast(self):
        """Mixed precision for the synthesis forwards (``amp='bf16'``); losses stay fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.amp == "bf16" else nullcontext()

    def prepare_generator(self, generator: nn.Module, compile: bool = True) -> nn.Module:
        """Move a generator to the device in the configured memory format; compile it when
        ``cfg.compile`` (and ``compile``: a module that is deep-copied must stay uncompiled)."""
        # under torchrun the generator's BatchNorm normalises with the global batch's statistics
        generator = distributed.global_batchnorm(generator).to(self.device)
        distributed.broadcast_state([generator])  # every rank starts from rank 0's generator
        if self.channels_last:
            generator = generator.to(memory_format=torch.channels_last)
        if self.cfg.compile and compile:
            generator.compile()
        return generator

    def set_hooks(self, enabled: bool) -> None:
        """Turn the synthesis-only forward hooks on or off (off in KD steps, which then pay
        nothing for them; the reference leaves them on, notes §6 item 13)."""
        if self.bn_loss is not None:
            self.bn_loss.set_enabled(enabled)

    def noise(self, *shape: int) -> torch.Tensor:
        """The random start of a batch (latent codes; DeepInversion's pixels), N(0, 1) on the
        device; under torchrun each rank draws its own from its own stream."""
        return torch.randn(shape, device=self.device)

    def sample_classes(self, n: int) -> torch.Tensor:
        """The classes a batch of ``n`` is synthesized as (:func:`sample_targets`)."""
        return sample_targets(n, self.cfg.num_classes, self.cfg.balanced_targets, self.device)

    def sync_grads(self, shared: Iterable[torch.Tensor], local: Iterable[torch.Tensor] = ()) -> None:
        """After a backward under torchrun, turn each rank's gradients into those of the global
        batch's loss (the mean of the ranks' losses): the ``shared`` tensors (generator, heads:
        the same on every rank) get the ranks' mean, the ``local`` ones (this rank's latents or
        images) are divided by the world size. The BN-statistics and class-balance terms are
        global already (their all-reduce back-propagates the sum), so N ranks x B images
        take the update one process takes with N x B. A single process: nothing."""
        ctx = distributed.current()
        if not ctx.enabled:
            return
        distributed.average_gradients(list(shared))
        for t in local:
            if t.grad is not None:
                t.grad.div_(ctx.world_size)

    def synced_grads(self, grads: Sequence[torch.Tensor], n_shared: int) -> List[torch.Tensor]:
        """:meth:`sync_grads` for a list of gradients in the autograd graph (second-order MAML):
        the first ``n_shared`` are averaged with a differentiable all-reduce, the rest divided."""
        ctx = distributed.current()
        if not ctx.enabled:
            return list(grads)
        shared = list(grads[:n_shared])
        out: List[torch.Tensor] = []
        if shared:
            flat = distributed.sum_over_ranks(torch.cat([g.reshape(-1) for g in shared])) / ctx.world_size
            out = [f.view_as(g) for f, g in zip(torch.split(flat, [g.numel() for g in shared]), shared)]
        return out + [g / ctx.world_size for g in grads[n_shared:]]

    def bn_term(self) -> Dict[str, torch.Tensor]:
        """``{"bn": bn * sum_l r_l}`` from the teacher's last forward, or nothing if bn = 0."""
        return {"bn": self.cfg.bn * self.bn_loss.value()} if self.bn_loss is not None else {}

    def inversion_losses(self, x_aug: torch.Tensor, targets: torch.Tensor, epoch: int) -> Dict[str, torch.Tensor]:
        """The weighted bn / oh / adv terms on an augmented, normalised batch."""
        cfg = self.cfg
        t_out = self.teacher(x_aug)
        losses = self.bn_term()
        if cfg.oh > 0:
            losses["oh"] = cfg.oh * F.cross_entropy(t_out, targets)
        if cfg.adv > 0 and self.adv_active(epoch):
            losses["adv"] = cfg.adv * masked_adversarial_kl(self.student(x_aug), t_out)
        return losses

    # -- round clock ----------------------------------------------------------------------
    # The reference counts synthesize() calls, 1-based and incremented before every test
    # (``self.ep += 1``), and its CIFAR scripts run one round per epoch. Schedules here are
    # given in epochs and map epoch E to round number E * rounds_per_epoch: at one round per
    # epoch that is the reference's counter exactly, and at ImageNet's 10 rounds per epoch the
    # latent re-sample every 5 epochs lands on rounds 50, 100, ... as its ``ep % 50`` does.
    def round_number(self, epoch: int) -> int:
        """The 1-based count of the current round over the whole run (the reference's ``ep``)."""
        return epoch * self.rounds_per_epoch + self.round_in_epoch + 1

    def rounds_in(self, epochs: float) -> int:
        """The number of rounds in ``epochs`` epochs (at least 1)."""
        return max(1, round(epochs * self.rounds_per_epoch))

    def every(self, epoch: int, period_epochs: float) -> bool:
        """True in the rounds whose number is a multiple of ``period_epochs`` epochs' rounds."""
        return self.round_number(epoch) % self.rounds_in(period_epochs) == 0

    def adv_active(self, epoch: int) -> bool:
        """The adversarial term's gate: from round ``warmup`` on (``ep >= warmup`` in the reference,
        so at one round per epoch it already acts in the last synthesis-only epoch); always for
        methods without the gate (``adv_warmup = False``: cmi)."""
        if not self.adv_warmup or self.cfg.warmup <= 0:
            return True
        return self.round_number(epoch) >= self.rounds_in(self.cfg.warmup)

    @property
    def reset_epoch(self) -> int:
        """When ``reset_l0`` / ``reset_bn`` act, as a 1-based epoch (the log's count):
        ``cfg.reset_epoch``, default warmup + 120 (the reference's ``ep == 120 + warmup``)."""
        return self.cfg.reset_epoch if self.cfg.reset_epoch is not None else self.cfg.warmup + 120

    def reset_due(self, epoch: int) -> bool:
        """True in exactly one round, round number ``reset_epoch * rounds_per_epoch`` (stateless,
        so a resumed run resets exactly when an uninterrupted one does)."""
        return self.round_number(epoch) == self.rounds_in(self.reset_epoch)

    class _Synthesis:
        """Context: BN hooks on, student in eval mode, timing with device synchronisation."""

        def __init__(self, synth: "Synthesizer"):
            self.s = synth

        def __enter__(self):
            self.was_training = self.s.student.training
            self.s.student.eval()
            # the adversarial term needs gradients w.r.t. the images only, not the student's weights
            self.grad_flags = [p.requires_grad for p in self.s.student.parameters()]
            self.s.student.requires_grad_(False)
            self.s.set_hooks(True)
            synchronize(self.s.device)
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            synchronize(self.s.device)
            self.elapsed = time.perf_counter() - self.t0
            self.s.set_hooks(False)
            for p, flag in zip(self.s.student.parameters(), self.grad_flags):
                p.requires_grad_(flag)
            self.s.student.train(self.was_training)

    def synthesis(self) -> "_Synthesis":
        return Synthesizer._Synthesis(self)
