"""OFD: the overhaul of feature distillation (Heo et al., "A Comprehensive Overhaul of Feature
Distillation", ICCV 2019, Eq. 2-4 and the margin of Eq. 3; references
``megvii-research/mdistiller`` ``mdistiller/distillers/OFD.py`` (MD) and ``karanchahal/distiller``
``distillers/oh_distiller.py`` (KC, which calls the method ``oh``)).

Per distilled stage ``i`` (pre-ReLU features of both nets, tap group ``preacts``):

* a trainable connector on the student side, 1x1 conv (no bias, He fan-out init) + BN, from
  the student's to the teacher's channels;
* the teacher's margin per channel ``m = E[x | x < 0]`` for ``x ~ N(beta, gamma^2)``, with
  ``gamma, beta`` the affine parameters of the teacher BN that produces the tapped
  pre-activation: ``m = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|)``, or ``-3|gamma|``
  unless ``Phi(-beta/|gamma|) > 0.001`` (both references' test). Computed once at
  construction (the teacher is frozen);
* the partial L2 loss: ``target = max(f_t, m)``, ``L_i = sum (r(f_s) - target)^2 *
  1[r(f_s) > target or target > 0]``: no penalty where both the student and the target lie
  at or below the margin (the negative responses the teacher's ReLU discards).

``ofd = sum_i L_i / B / 2^(n-i-1)`` (the last stage weighs 1, each earlier one half the next).
Both references compute exactly this scale and then multiply by 1/1000 (MD: ``FEAT_WEIGHT``
0.001 times the batch mean; KC: ``/ batch_size / 1000``), so the default is ``-b 0.001``
(``-r 1 -a 0``) under either recipe. Note that MD has the ``1/2^(n-i-1)`` factors too; the two
forms (``ofd_form``) differ in pairing and spatial alignment:

* ``md`` (default): the last ``min(n_s, n_t)`` stages of each net are paired, the teacher map
  is average-pooled to the student's spatial size;
* ``distiller``: the first ``min(n_s, n_t)`` stages are paired and their spatial sizes must
  match (KC neither pools nor checks; here a mismatch is a clear error at construction). KC
  divides by the configured batch size; here the batch's own size is used.

**Which teacher BN.** Found generically: one forward of two blank images (eval mode) records
the order in which modules run; the BN for a tap is the last ``BatchNorm2d`` that ran before
the tapped tensor was produced (before the tapped module's call for an ``:in`` tap, within
it for an output tap), skipping BNs inside a residual projection branch (a module path
containing ``downsample`` or ``shortcut``: the pre-activation is ``bn(residual) + shortcut``
and both references take the residual branch's BN), whose ``num_features`` equals the
tapped channel count. This reproduces the references' ``get_bn_before_relu`` for the
registry's ResNets (``layerK[-1].bn2``/``bn3``), WRNs (the next group's first ``bn1``, then
the final ``bn1``), VGGs and MobileNetV2; a tap with no such BN raises a clear error.

**Teacher BN mode.** Both references keep the teacher's BN in train mode (batch statistics;
KC ``t_net.train()``, MD's ``OFD.train()`` does not put the teacher in eval mode), so the
default ``ofd_teacher_bn train`` does the same; ``eval`` uses the running statistics.
Deviation: in train mode the teacher's running statistics are left untouched (BN momentum 0
for the duration of its forward). They do not enter the loss in train mode, and a teacher
shared with later runs of the same invocation stays as loaded; the references let them drift.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.hooks import parse_tap, resolve_module
from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller

OFD_FORMS = ("md", "distiller")
SHORTCUT_NAMES = ("downsample", "shortcut")


def ofd_margin(gamma: torch.Tensor, beta: torch.Tensor, min_cdf: float = 1e-3) -> torch.Tensor:
    """``E[x | x < 0]`` per channel for ``x ~ N(beta, gamma^2)``; ``-3|gamma|`` unless
    ``Phi(-beta/|gamma|) > min_cdf``. Float32 result, computed in float64."""
    std = gamma.detach().double().abs().clamp_min(1e-12)  # |gamma| -> 0 gives the limits: beta<0 -> beta, else 0
    mean = beta.detach().double()
    a = -mean / std
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))  # Phi(-beta/|gamma|)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)  # phi(beta/|gamma|) (even function)
    truncated = mean - std * pdf / cdf.clamp_min(1e-300)
    return torch.where(cdf > min_cdf, truncated, -3.0 * std).float()


def ofd_partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Element-wise partial L2: ``(s - max(t, m))^2`` where ``s > max(t, m)`` or ``max(t, m) > 0``,
    else 0. ``margin`` broadcasts over ``source`` (shape ``(1, C, 1, 1)`` for maps)."""
    goal = torch.maximum(target, margin)
    keep = (source > goal) | (goal > 0)
    return torch.where(keep, (source - goal).pow(2), torch.zeros_like(source))


def ofd_loss(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], margins: Sequence[torch.Tensor],
             pool_teacher: bool = True) -> torch.Tensor:
    """``sum_i sum(partial L2) / B / 2^(n-i-1)`` over paired stages (``sources`` already through
    the connectors); with ``pool_teacher`` each teacher map is average-pooled to the student's
    spatial size first (MD)."""
    n = len(sources)
    total = sources[0].new_zeros(())
    for i, (src, tgt, m) in enumerate(zip(sources, targets, margins)):
        if pool_teacher and tgt.shape[2:] != src.shape[2:]:
            tgt = F.adaptive_avg_pool2d(tgt, src.shape[2:])
        stage = ofd_partial_l2(src.float(), tgt.float(), m.view(1, -1, 1, 1)).sum() / src.shape[0]
        total = total + stage / 2 ** (n - i - 1)
    return total


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    """1x1 conv (no bias, ``N(0, sqrt(2/(k*k*out)))``) + BN(weight 1, bias 0), as both references."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    bn = nn.BatchNorm2d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


def _is_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


@torch.no_grad()
def bn_before_taps(model: nn.Module, specs: Sequence[str], channels: Sequence[int],
                   example: torch.Tensor) -> List[Tuple[str, nn.BatchNorm2d]]:
    """For each tap spec, the ``(name, module)`` of the BatchNorm2d that produced its tensor
    (the rule of the module docstring), from one eval-mode forward of ``example``."""
    bns = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    events: List[Tuple[str, object]] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: events.append(("bn", name)))
               for name, m in bns.items()]
    for j, spec in enumerate(specs):
        path, side = parse_tap(spec)
        mod = resolve_module(model, path)
        if side == "in":
            handles.append(mod.register_forward_pre_hook(lambda _m, _i, j=j: events.append(("tap", j))))
        else:
            handles.append(mod.register_forward_hook(lambda _m, _i, _o, j=j: events.append(("tap", j))))
    was = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        model(example.to(p.device if p is not None else "cpu"))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    found = []
    for j, (spec, c) in enumerate(zip(specs, channels)):
        calls = [i for i, e in enumerate(events) if e == ("tap", j)]
        ran = [e[1] for e in events[:calls[-1]] if e[0] == "bn"] if calls else []
        picked: Optional[str] = next((n for n in reversed(ran) if not _is_shortcut(n)), None)
        if picked is None or bns[picked].num_features != c:
            why = ("no BatchNorm2d runs before it" if picked is None else
                   f"the last BatchNorm2d before it, {picked}, has {bns[picked].num_features} channels, not {c}")
            raise ValueError(f"ofd: cannot find the teacher BN that feeds the pre-activation tap {spec!r} ({why}); "
                             "OFD needs a teacher whose tapped pre-ReLU features come out of a BatchNorm2d")
        found.append((picked, bns[picked]))
    return found


@contextlib.contextmanager
def keep_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, BNs in train mode use batch statistics but leave their running ones."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


@register_distiller("ofd", "oh")
class OFD(Distiller):
    taps = ("preacts",)
    weights = Weights(r=1.0, a=0.0, b=0.001)
    weights_distiller = Weights(r=1.0, a=0.0, b=0.001)

    @dataclass
    class Options:
        ofd_form: str = option("md", "OFD: md (last stages paired, teacher pooled to the student's size) or "
                                     "distiller (first stages paired, sizes must match)")
        ofd_teacher_bn: str = option("train", "OFD: teacher BatchNorm mode, train (both references) or eval")

    def setup(self) -> None:
        o = self.opts
        if o.ofd_form not in OFD_FORMS:
            raise ValueError(f"ofd_form must be one of {', '.join(OFD_FORMS)}; got {o.ofd_form!r}")
        if o.ofd_teacher_bn not in ("train", "eval"):
            raise ValueError(f"ofd_teacher_bn must be train or eval; got {o.ofd_teacher_bn!r}")
        self.teacher_train_mode = o.ofd_teacher_bn == "train"
        s_names, t_names = self.s_groups["preacts"], self.t_groups["preacts"]
        n = min(len(s_names), len(t_names))
        if o.ofd_form == "md":
            s_names, t_names = s_names[len(s_names) - n:], t_names[len(t_names) - n:]
        else:
            s_names, t_names = s_names[:n], t_names[:n]
        self.pairs = list(zip(s_names, t_names))
        s_shapes = [self.s_shapes[k] for k in s_names]
        t_shapes = [self.t_shapes[k] for k in t_names]
        for (sk, tk), ss, ts in zip(self.pairs, s_shapes, t_shapes):
            if len(ss) != 4 or len(ts) != 4:
                raise ValueError(f"ofd distils feature maps; taps {sk} {tuple(ss)} / {tk} {tuple(ts)} are not 4-D")
            if o.ofd_form == "distiller" and ss[2:] != ts[2:]:
                raise ValueError(f"ofd (distiller form): student {sk} is {tuple(ss[2:])} but teacher {tk} is "
                                 f"{tuple(ts[2:])}; use --ofd_form md to pool the teacher to the student's size")
        self.connectors = nn.ModuleList([connector(ss[1], ts[1]) for ss, ts in zip(s_shapes, t_shapes)])
        specs = [self.t_hooks.specs[k] for k in t_names]
        self.teacher_bns = [name for name, _ in bn_before_taps(self.teacher, specs, [ts[1] for ts in t_shapes],
                                                               self.data.example(2))]
        bns = dict(self.teacher.named_modules())
        for i, name in enumerate(self.teacher_bns):
            self.register_buffer(f"margin{i}", ofd_margin(bns[name].weight, bns[name].bias), persistent=False)
        self.t_hooks.clear()

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"ofd_connectors": self.connectors}

    def margins(self) -> List[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.pairs))]

    def teacher_forward(self, x: torch.Tensor):
        guard = keep_bn_statistics(self.teacher) if self.teacher.training else contextlib.nullcontext()
        with guard:
            return super().teacher_forward(x)

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        sources = [conn(out.s[sk]) for conn, (sk, _) in zip(self.connectors, self.pairs)]
        targets = [out.t[tk] for _, tk in self.pairs]
        return {"ofd": ofd_loss(sources, targets, self.margins(), pool_teacher=self.opts.ofd_form == "md")}
