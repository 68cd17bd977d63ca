"""The distiller base class: what every data-driven KD method shares.

A distiller is an :class:`engine.objective.Objective` built from a student, a frozen teacher
and a description of the training data. Per batch it runs the teacher once under
``no_grad`` and the student once, with forward hooks (:class:`engine.hooks.FeatureTaps`) on
only the taps the method reads, and returns a dict of **unweighted** named losses. The
trainer weights them by their name (RepDistiller's ``loss = gamma*CE + alpha*KL + beta*other``,
``train_student.py``):

* ``ce`` and ``ce_*``: ``-r`` (gamma, cross-entropy on the labels);
* ``kd`` and ``kd_*``: ``-a`` (alpha, Hinton KD at ``--kd_T``);
* every other name: ``-b`` (beta, the method's own loss).

A term whose weight is 0 is not computed. A method declares, as class attributes:

* ``taps``: the tap groups it reads from both nets (``stem``, ``stages``, ``preacts``,
  ``last_stage``, ``last_preact``, ``pool``, ``feat`` = RepDistiller's ``[stem, stages...,
  pool]`` list) or explicit tap names; ``teacher_taps`` / ``student_taps`` when they differ;
* ``weights``: its default ``-r/-a/-b`` (from the reference scripts), used for any weight the
  command line leaves unset;
* ``Options``: a dataclass of its own hyper-parameters; each field becomes a command-line flag
  of ``kd/train.py`` (``metadata={"help": ..., "flags": (...)}``);
* ``needs_index`` (batches carry the sample index, as CRD needs), ``flip`` (override the
  dataset's horizontal flip, MLKD), ``hard_labels`` (needs class indices, not soft targets).

It builds its extra trainable modules in :meth:`setup` (feature shapes are probed once with
a forward pass of two blank images, as RepDistiller does) and returns them from
:meth:`extra_modules`; they are optimised with the student and saved in checkpoints. A
method with an initialisation stage returns it from :meth:`init_stage`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.hooks import FeatureTaps
from engine.objective import Objective
from kd.losses import kd_kl_div

TAP_GROUPS = ("stem", "stages", "preacts", "last_stage", "last_preact", "pool", "feat", "feat_preact")


@dataclass
class Weights:
    """``-r`` (cross-entropy), ``-a`` (Hinton KD), ``-b`` (the method's loss)."""

    r: Optional[float] = None
    a: Optional[float] = None
    b: Optional[float] = None

    def merged(self, defaults: "Weights") -> "Weights":
        """These weights, with unset ones taken from ``defaults`` (then r=1, a=0, b=0)."""
        pick = lambda mine, dflt, last: mine if mine is not None else (dflt if dflt is not None else last)  # noqa: E731
        return Weights(pick(self.r, defaults.r, 1.0), pick(self.a, defaults.a, 0.0), pick(self.b, defaults.b, 0.0))


@dataclass
class DataInfo:
    """What a distiller may know about its training data: classes, image geometry and
    normalisation, and (for CRD's memory bank and class-aware negatives) the size and the
    labels of the training set, in loader index order."""

    num_classes: int
    in_chans: int = 3
    image_size: int = 32
    mean: Tuple[float, ...] = (0.5,)
    std: Tuple[float, ...] = (0.5,)
    num_samples: int = 0
    labels: Optional[torch.Tensor] = None

    def example(self, n: int = 2) -> torch.Tensor:
        return torch.zeros(n, self.in_chans, self.image_size, self.image_size)


@dataclass
class NoOptions:
    """A method without hyper-parameters of its own."""


def option(default: Any, help: str, *flags: str) -> Any:
    """A field of a method's ``Options`` with its help text and extra flag spellings."""
    return field(default=default, metadata={"help": help, "flags": flags})


@dataclass
class InitStage:
    """A method's initialisation stage (RepDistiller ``helper/pretrain.py::init``): ``objective``
    trains only its own modules for ``epochs`` epochs at ``lr`` (None: the main lr), with
    momentum and weight decay as the main stage and no lr schedule."""

    name: str
    objective: Objective
    epochs: int
    lr: Optional[float] = None


class Outputs:
    """One step's forward results: logits, tapped features and the batch."""

    __slots__ = ("x", "y", "index", "s_logits", "t_logits", "s", "t", "_s_groups", "_t_groups")

    def __init__(self, x, y, index, s_logits, t_logits, s, t, s_groups, t_groups):
        self.x, self.y, self.index = x, y, index
        self.s_logits, self.t_logits = s_logits, t_logits
        self.s, self.t = s, t
        self._s_groups, self._t_groups = s_groups, t_groups

    def s_feats(self, group: str) -> List[torch.Tensor]:
        """Student features of a tap group (or one tap name), in order."""
        return [self.s[n] for n in self._s_groups[group]]

    def t_feats(self, group: str) -> List[torch.Tensor]:
        """Teacher features of a tap group (or one tap name), in order."""
        return [self.t[n] for n in self._t_groups[group]]


def tap_group(names: Sequence[str], group: str) -> List[str]:
    """Expand a tap group over a model's tap names (``stage1..N``, ``preact1..N``, ...)."""
    stages = [n for n in names if n.startswith("stage")]
    preacts = [n for n in names if n.startswith("preact")]
    stem = [n for n in names if n == "stem"]
    pool = [n for n in names if n == "pool"]
    groups = {
        "stem": stem, "stages": stages, "preacts": preacts, "pool": pool,
        "last_stage": stages[-1:], "last_preact": preacts[-1:],
        "feat": stem + stages + pool, "feat_preact": stem + preacts + pool,
    }
    if group in groups:
        out = groups[group]
    elif group in names:
        out = [group]
    else:
        raise KeyError(f"no tap or tap group {group!r}; taps: {', '.join(names)}; groups: {', '.join(TAP_GROUPS)}")
    if not out:
        raise KeyError(f"tap group {group!r} is empty for a model with taps {', '.join(names)}")
    return out


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices from labels that may be soft (mixed) targets: the dominant class."""
    return y if y.dtype in (torch.int64, torch.int32) else y.argmax(1)


class Distiller(Objective):
    """Base of every data-driven KD method (see the module docstring)."""

    name: ClassVar[str] = ""
    taps: ClassVar[Sequence[str]] = ()
    teacher_taps: ClassVar[Optional[Sequence[str]]] = None
    student_taps: ClassVar[Optional[Sequence[str]]] = None
    weights: ClassVar[Weights] = Weights(r=1.0, a=0.0, b=1.0)
    Options: ClassVar[type] = NoOptions
    needs_index: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    flip: ClassVar[Optional[bool]] = None
    reads_temperature: ClassVar[bool] = False  # uses --kd_T beyond the ``kd`` term (DKD, BYOT, ...)
    weights_distiller: ClassVar[Optional[Weights]] = None  # defaults under Distiller's recipe, if they differ
    teacher_train_mode: bool = False  # keep the teacher's BatchNorm in train mode (OFD)

    @classmethod
    def has_method_loss(cls) -> bool:
        """Whether the method has a loss of its own (weighted by ``-b``)."""
        return cls.method_losses is not Distiller.method_losses or cls.forward is not Distiller.forward

    @classmethod
    def has_init_stage(cls) -> bool:
        return cls.init_stage is not Distiller.init_stage

    @classmethod
    def uses_temperature(cls, weights: Weights) -> bool:
        return cls.reads_temperature or bool(weights.a)

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], data: DataInfo, T: float = 4.0,
                 weights: Optional[Weights] = None, options: Any = None,
                 t_taps: Optional[Mapping[str, str]] = None, s_taps: Optional[Mapping[str, str]] = None):
        super().__init__(student)
        if teacher is None and self.needs_teacher:
            raise ValueError(f"{self.name or type(self).__name__} needs a teacher")
        self.teacher = teacher
        self.data, self.T = data, T
        self.w = (weights or Weights()).merged(self.weights)
        self.opts = options if options is not None else self.Options()
        self.epoch = 0
        s_groups = self.student_taps if self.student_taps is not None else self.taps
        t_groups = self.teacher_taps if self.teacher_taps is not None else self.taps
        self.s_hooks, self.s_groups = self._attach(student, s_taps, s_groups)
        self.t_hooks, self.t_groups = (self._attach(teacher, t_taps, t_groups) if teacher is not None
                                       else (None, {}))
        self.s_shapes: Dict[str, torch.Size] = {}
        self.t_shapes: Dict[str, torch.Size] = {}
        if self.s_hooks is not None or self.t_hooks is not None:
            self._probe_shapes()
        self.setup()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _attach(model: nn.Module, taps: Optional[Mapping[str, str]], groups: Sequence[str]):
        if not groups:
            return None, {}
        table = dict(taps) if taps is not None else getattr(model, "feature_taps", None)
        if table is None:
            raise ValueError(f"{type(model).__name__} declares no feature_taps; pass taps such as "
                             "{'stage1': 'layer1', ..., 'pool': 'fc:in'}")
        resolved = {g: tap_group(list(table), g) for g in groups}
        needed = {n: table[n] for g in resolved.values() for n in g}
        return FeatureTaps(model, needed), resolved

    @torch.no_grad()
    def _probe_shapes(self) -> None:
        """Feature shapes of both nets on a batch of two blank images (eval mode)."""
        x = self.data.example(2)
        for model, hooks, into in ((self.student, self.s_hooks, self.s_shapes),
                                   (self.teacher, self.t_hooks, self.t_shapes)):
            if hooks is None:
                continue
            was = model.training
            model.eval()
            p = next(model.parameters(), None)
            model(x.to(p.device if p is not None else "cpu"))
            model.train(was)
            into.update({k: v.shape for k, v in hooks.features.items()})
            hooks.clear()

    def setup(self) -> None:
        """Build extra modules (shapes are in ``self.s_shapes`` / ``self.t_shapes``)."""

    def s_shape(self, group: str) -> List[torch.Size]:
        return [self.s_shapes[n] for n in self.s_groups[group]]

    def t_shape(self, group: str) -> List[torch.Size]:
        return [self.t_shapes[n] for n in self.t_groups[group]]

    # ------------------------------------------------------------ objective API
    def frozen_modules(self) -> Iterable[nn.Module]:
        return (self.teacher,) if self.teacher is not None else ()

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None and self.teacher_train_mode:
            self.teacher.train(mode)
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def loss_weight(self, name: str) -> float:
        if name == "ce" or name.startswith("ce_"):
            return self.w.r
        if name == "kd" or name.startswith("kd_"):
            return self.w.a
        return self.w.b

    @property
    def method_weight(self) -> float:
        return self.w.b

    # ------------------------------------------------------------------ forward
    @staticmethod
    def unpack(batch) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``x``, labels (class indices or soft targets) and sample indices of a batch."""
        if isinstance(batch, torch.Tensor):
            return batch, None, None
        x, y = batch[0], batch[1] if len(batch) > 1 else None
        return x, y, batch[2] if len(batch) > 2 else None

    def teacher_forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        with torch.no_grad():
            logits = self.teacher(x)
            feats = dict(self.t_hooks.features) if self.t_hooks is not None else {}
        return logits, feats

    def student_forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, (dict(self.s_hooks.features) if self.s_hooks is not None else {})

    def base_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        """``ce`` (when labelled and ``-r`` > 0) and ``kd`` (when ``-a`` > 0)."""
        losses: Dict[str, torch.Tensor] = {}
        if out.y is not None and self.w.r:
            losses["ce"] = F.cross_entropy(out.s_logits, out.y)
        if self.w.a and out.t_logits is not None:
            losses["kd"] = self.kd_term(out.s_logits, out.t_logits)
        return losses

    def kd_term(self, s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        """The ``-a`` term: Hinton's KL at ``T`` (times T^2)."""
        return kd_kl_div(s_logits, t_logits, self.T)

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        """The method's own (unweighted) losses; computed only when ``-b`` > 0."""
        return {}

    def has_main_loss(self) -> bool:
        """Whether this instance's main stage computes a loss of its own (two-stage methods whose
        loss lives in the init stage say no)."""
        return type(self).has_method_loss()

    def runs_teacher(self) -> bool:
        """Whether a training step needs the teacher's forward at all (KD term or own loss)."""
        return self.teacher is not None and (bool(self.w.a) or (bool(self.w.b) and self.has_main_loss()))

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        x, y, index = self.unpack(batch)
        t_logits, t_feats = self.teacher_forward(x) if self.runs_teacher() else (None, {})
        s_logits, s_feats = self.student_forward(x)
        out = Outputs(x, y, index, s_logits, t_logits, s_feats, t_feats, self.s_groups, self.t_groups)
        losses = self.base_losses(out)
        if self.w.b:
            losses.update(self.method_losses(out))
        return losses

    def remove_taps(self) -> None:
        """Detach this distiller's forward hooks from both nets (they may be reused elsewhere)."""
        for hooks in (self.s_hooks, self.t_hooks):
            if hooks is not None:
                hooks.remove()

    def init_stage(self, epochs: int) -> Optional[InitStage]:
        """The method's initialisation stage of ``epochs`` epochs, if it has one."""
        return None

    def describe(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self.opts, f.name)}" for f in dataclasses.fields(self.opts))
        return (f"{self.name}: -r {self.w.r:g} -a {self.w.a:g} -b {self.w.b:g}, kd_T {self.T:g}"
                + (f", {opts}" if opts else ""))


class StageObjective(Objective):
    """An objective for an initialisation stage: trains exactly ``modules`` on ``loss_fn``.

    ``student`` stays the evaluated/saved model; only ``modules`` reach the optimiser.
    """

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], modules: Dict[str, nn.Module], loss_fn):
        super().__init__(student)
        self.teacher = teacher
        self.stage_modules = nn.ModuleDict(modules)
        self.loss_fn = loss_fn

    def trainable_modules(self) -> Dict[str, nn.Module]:
        return dict(self.stage_modules)

    def frozen_modules(self) -> Iterable[nn.Module]:
        return (self.teacher,) if self.teacher is not None else ()

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        return self.loss_fn(batch)
