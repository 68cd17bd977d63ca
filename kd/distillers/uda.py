"""UDA-KD: KD on the clean batch and on an AutoAugment view of it (karanchahal/distiller
``distillers/uda_distiller.py::UDATrainer``).

    1/2 * KD(x) + 1/2 * KD(AutoAugment-CIFAR10(x)),   KD = r CE(s, y) + a T^2 KL(p_t || p_s)

with the same labels for both views; the teacher and the student each run once per view (two
forwards, so BatchNorm sees each view as its own batch, as the reference). Losses: ``ce`` and
``kd`` for the clean view, ``ce_aug`` and ``kd_aug`` for the augmented one, each pre-multiplied by
1/2 (so ``-r`` weighs both CE terms and ``-a`` both KD terms). Defaults: Distiller's lambda 0.5
(``-r 0.5 -a 0.5``) under its recipe; RepDistiller's KD weights (``-r 0.1 -a 0.9``) otherwise.
The reference's unused ``uda_loss`` is not implemented.

Augmentation on the device: the normalised batch is mapped back to [0, 1] with the dataset's
``mean``/``std``, clamped, quantised to uint8 (the reference augments 8-bit PIL images),
augmented by torchvision's ``AutoAugment(AutoAugmentPolicy.CIFAR10)`` with grey fill 128 (the
reference's ``fillcolor``), and normalised again. AutoAugment draws one sub-policy (and its
coin flips and signs) per call and applies it to the whole tensor it gets, so it is called per
group of ``--uda_group`` images, default 1: one draw per image, as the reference, which
augments each image independently in its dataset's ``__getitem__``. Larger groups share a draw
and make fewer, larger kernel launches. The module applied is the attribute ``policy`` (any
``nn.Module`` mapping uint8 ``(N, C, H, W)`` images to uint8 images; tests substitute a stub).

Deviations: (1) the augmented view is made from the loader's batch, i.e. after its random crop
and flip; the reference applies the policy to the raw image and crops/flips only the clean
view. (2) The operations are torchvision's implementations of the CIFAR-10 policy: the same 25
sub-policies, probabilities and magnitude bins, but nearest-neighbour resampling for every
geometric operation (the reference shears bicubically), a random sign for rotations (the
reference rotates one way) and solarize thresholds from 255 (the reference's from 256).
(3) torchvision's tensor ``equalize`` reads a value back from the device (``if step == 0``)
for each image and channel it equalises: the only host syncs of this method's step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from kd.distillers.base import Distiller, Weights, option
from kd.distillers.registry import register_distiller
from kd.losses import kd_kl_div


def to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised images back to 8-bit ``[0, 255]`` (clamped, rounded)."""
    return (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def from_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """8-bit images to the normalised input space."""
    return (images.to(dtype) / 255 - mean) / std


def augment_batch(x: torch.Tensor, policy, mean: torch.Tensor, std: torch.Tensor, group: int = 1) -> torch.Tensor:
    """``policy`` applied to consecutive groups of ``group`` images of the normalised batch ``x``
    in 8-bit space; the result is normalised like ``x``."""
    images = to_uint8(x, mean, std)
    out = torch.cat([policy(chunk) for chunk in images.split(max(1, int(group)))], 0)
    return from_uint8(out, mean, std, x.dtype)


@register_distiller("uda")
class UDA(Distiller):
    weights = Weights(r=0.1, a=0.9, b=0.0)
    weights_distiller = Weights(r=0.5, a=0.5, b=0.0)

    @dataclass
    class Options:
        uda_group: int = option(1, "UDA: images per AutoAugment draw (1: a sub-policy per image, as the reference)")

    @classmethod
    def has_method_loss(cls) -> bool:
        return False  # only CE and KD terms (-r, -a)

    def setup(self) -> None:
        self.policy = AutoAugment(AutoAugmentPolicy.CIFAR10, fill=128)
        p = next(self.student.parameters(), None)
        device = p.device if p is not None else None
        as_stats = lambda v: torch.tensor(v, device=device).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("img_mean", as_stats(self.data.mean), persistent=False)
        self.register_buffer("img_std", as_stats(self.data.std), persistent=False)

    @torch.no_grad()
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented view of a normalised batch."""
        return augment_batch(x, self.policy, self.img_mean.to(x.dtype), self.img_std.to(x.dtype), self.opts.uda_group)

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        x, y, _ = self.unpack(batch)
        losses: Dict[str, torch.Tensor] = {}
        for suffix, view in (("", x), ("_aug", self.augment(x))):
            t_logits, _ = self.teacher_forward(view)
            s_logits, _ = self.student_forward(view)
            if y is not None and self.w.r:
                losses["ce" + suffix] = 0.5 * F.cross_entropy(s_logits, y)
            if self.w.a:
                losses["kd" + suffix] = 0.5 * kd_kl_div(s_logits, t_logits, self.T)
        return losses
