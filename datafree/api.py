"""Data-free KD from Python, for any ``nn.Module`` teacher.

>>> from datafree.api import distill
>>> from datafree import SynthesisConfig
>>> from engine.trainer import TrainConfig
>>> syn = SynthesisConfig(num_classes=10, img_size=32, nc=3, mean=MEAN, std=STD,   # the teacher's
...                       g_steps=10, lr_g=2e-3, lr_z=1e-2, bn=10, oh=0.4, adv=1.1)  # own normalisation
>>> metrics = distill(my_teacher, my_student, "fast_meta", syn,
...                   TrainConfig(epochs=220, lr=0.2, schedule="cosine", save_dir="run/mine"),
...                   test_loader=my_loader, T=20, kd_steps=400, ep_steps=400)

The teacher must contain ``BatchNorm2d`` layers when ``syn.bn > 0`` (a clear error says so
otherwise). ``test_loader`` is any iterable of ``(x, y)`` batches already normalised like the
teacher's inputs; it may be ``None`` (no evaluation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.nn as nn

from datafree import SynthesisConfig, get_synthesizer_class
from datafree.source import DataFreeSource
from engine import distributed
from engine.logger import RunLogger
from engine.preflight import probe_models
from engine.trainer import TrainConfig, Trainer
from engine.utils import resolve_device
from kd.distillers import KD, Weights


@dataclass(frozen=True)
class StudentLoss:
    """The data-free student's loss on teacher logits: ``kl`` at temperature ``T`` or ``l1``."""

    loss: str
    T: float
    source: str  # where the choice came from, for the log

    @property
    def formula(self) -> str:
        return f"KL at T={self.T:g}" if self.loss == "kl" else "L1 on logits"

    def describe(self) -> str:
        return f"student loss: {self.formula} ({self.source})"


def student_loss(method: str, kd_loss: Optional[str] = None, T: Optional[float] = None,
                 default_T: float = 20.0) -> StudentLoss:
    """Resolve the student's KD loss of ``method``: an explicit ``kd_loss`` / ``T`` wins; otherwise
    the method's published default (KL at T=1 for dafl/zskt/dfq, L1 for dfad, because Fast-Datafree's driver reuses the adversarial criterion as the KD criterion),
    and ``default_T`` for the pool methods."""
    cls = get_synthesizer_class(method)
    published = StudentLoss(cls.student_loss, cls.student_T or 1.0, "published")
    has_published = cls.student_T is not None or cls.student_loss != "kl"
    if kd_loss is not None and kd_loss not in KD.LOGIT_LOSSES:
        raise ValueError(f"kd_loss must be one of {', '.join(KD.LOGIT_LOSSES)}; got {kd_loss!r}")
    loss = kd_loss or cls.student_loss
    given = ([f"--kd_loss {kd_loss}"] if kd_loss is not None else []) + ([f"--T {T:g}"] if T is not None else [])
    if T is None:
        T = cls.student_T if cls.student_T is not None else default_T
    if given:
        source = "as given: " + ", ".join(given)
        if has_published:
            source += f"; {method}'s published runs used {published.formula}"
    elif has_published:
        source = f"{method}'s published runs: Fast-Datafree's driver reuses the adversarial criterion for KD"
    else:
        source = f"--T default {T:g}"
    return StudentLoss(loss, float(T), source)


def recipe_config(method: str, **fields) -> SynthesisConfig:
    """A :class:`SynthesisConfig` with ``method``'s published CIFAR recipe
    (``recipes/<method>_cifar.yaml``, the same file the command line's defaults come from) and
    ``fields`` on top, e.g. ``recipe_config("fast_meta", num_classes=10, mean=M, std=S)``."""
    import dataclasses

    from engine.recipes import method_recipe, read_recipe

    path = method_recipe(method)
    recipe = read_recipe(path) if path else {}
    names = {f.name: f for f in dataclasses.fields(SynthesisConfig)}
    values = {}
    for key, value in recipe.items():
        key = {"synthesis_batch_size": "batch_size"}.get(key, key)
        if key in names and key not in ("seed",):
            default = names[key].default
            values[key] = type(default)(value) if isinstance(default, (bool, int, float)) and value is not None else value
    return SynthesisConfig(**{**values, **fields})


def build_trainer(teacher: nn.Module, student: nn.Module, method: str, syn: SynthesisConfig, train: TrainConfig,
                  test_loader: Optional[Iterable] = None, T: Optional[float] = None, kd_loss: Optional[str] = None,
                  batch_size: int = 256,
                  kd_steps: int = 400, ep_steps: int = 400, device: Optional[torch.device] = None,
                  logger: Optional[RunLogger] = None, args: Optional[dict] = None,
                  init_images: Optional[Union[torch.Tensor, Iterable[torch.Tensor]]] = None) -> Trainer:
    """Wire teacher, student, synthesizer, KD objective and trainer together. ``init_images``
    (a tensor, or an iterable of chunks such as :func:`datafree.pool.iter_image_set` streams;
    uint8 or float in [0, 1]) start the pool, as Fast-Datafree's ``--cmi_init`` does, and are never
    evicted. The pool's checkpoints go to ``<save_dir>/pool`` (new images only, per epoch), and a
    pool over its device/host budgets spills to ``<save_dir>/pool_spill`` unless told otherwise. ``T`` / ``kd_loss``
    left ``None`` take the method's published student loss (:func:`student_loss`; T 20 for the
    pool methods, the CIFAR scripts' value)."""
    device = device or resolve_device("auto")
    # a teacher or student that does not take the configured images or give num_classes logits
    # fails here, with one line, before the synthesizer or any output exists
    probe_models({"teacher": teacher, "student": student}, syn.num_classes, syn.nc, syn.img_size)
    teacher = teacher.to(device).eval()
    teacher.requires_grad_(False)
    student = student.to(device)
    synth = get_synthesizer_class(method)(teacher, student, syn, device)
    if synth.uses_pool:  # under torchrun each rank's pool shard has its own folders
        shard = [f"rank{distributed.current().rank}"] if distributed.current().enabled else []
        synth.pool.persist_dir = os.path.join(train.save_dir, "pool", *shard)
        synth.pool.spill_dir = os.path.join(synth.pool.spill_dir or os.path.join(train.save_dir, "pool_spill"), *shard)
    if init_images is not None:
        if not synth.uses_pool:
            raise ValueError(f"--cmi_init: {method} draws fresh generator batches and keeps no image pool")
        chunks = init_images.split(1024) if isinstance(init_images, torch.Tensor) else init_images
        for chunk in chunks:
            synth.pool.add_init(chunk)
    logger = logger or RunLogger(train.save_dir)
    source = DataFreeSource(synth, batch_size, kd_steps, ep_steps, syn.warmup, logger,
                            image_dir=os.path.join(train.save_dir, "images"))
    synth.progress = source.progress = train.progress
    train.sched_start_epoch = syn.warmup  # the schedule runs over the post-warm-up epochs
    if (syn.reset_l0 or syn.reset_bn) and synth.reset_epoch > train.epochs:
        logger.info(f"warning: --reset_l0/--reset_bn act at epoch {synth.reset_epoch} (--reset_epoch, default "
                    f"warmup + 120) but the run has {train.epochs} epochs: no reset will happen")
    loss = student_loss(method, kd_loss, T)
    logger.info(loss.describe())
    if args is not None:  # the checkpoint and metrics.json record the loss that ran
        args = {**args, "kd_loss": loss.loss, "T": loss.T}
    objective = KD(student, teacher, T=loss.T, weights=Weights(r=0.0, a=1.0), logit_loss=loss.loss)
    return Trainer(objective, source, test_loader, train, device, logger, args)


def distill(teacher: nn.Module, student: nn.Module, method: str, syn: SynthesisConfig, train: TrainConfig,
            test_loader: Optional[Iterable] = None, resume: Optional[str] = None, **kw) -> dict:
    """Run data-free KD; returns the metrics also written to ``<save_dir>/metrics.json``."""
    trainer = build_trainer(teacher, student, method, syn, train, test_loader, **kw)
    if resume:
        trainer.resume(resume)
    return trainer.fit()
