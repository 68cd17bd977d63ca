"""Shared helpers for the KD tests: a tiny teacher/student pair, tiny batches, a few SGD steps."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from engine.trainer import TrainConfig, Trainer
from kd.distillers import DataInfo, Weights, get_distiller_class
from registry.models import get_model

NUM_CLASSES = 10
N_DATA = 64


def tiny_info(n: int = N_DATA, num_classes: int = NUM_CLASSES, seed: int = 0) -> DataInfo:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return DataInfo(num_classes=num_classes, in_chans=3, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    num_samples=n, labels=labels)


def tiny_pair(teacher: str = "resnet14", student: str = "resnet8", seed: int = 0):
    torch.manual_seed(seed)
    t = get_model(teacher, num_classes=NUM_CLASSES).eval()
    s = get_model(student, num_classes=NUM_CLASSES)
    return t, s


def tiny_batch(info: DataInfo, batch: int = 16, seed: int = 1, with_index: bool = False):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(info.num_samples, generator=g)[:batch]
    x = torch.randn(batch, info.in_chans, info.image_size, info.image_size, generator=g)
    y = info.labels[idx]
    return (x, y, idx) if with_index else (x, y)


def build(method: str, teacher=None, student=None, info: Optional[DataInfo] = None, weights: Optional[Weights] = None,
          T: float = 4.0, **options):
    cls = get_distiller_class(method)
    if teacher is None or student is None:
        teacher, student = tiny_pair()
    info = info or tiny_info()
    opts = cls.Options(**options)
    return cls(student, teacher if cls.needs_teacher else None, info, T=T, weights=weights, options=opts)


def weighted_total(distiller, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v * distiller.loss_weight(k) for k, v in losses.items())


def run_steps(distiller, batch, steps: int = 6, lr: float = 0.01) -> List[float]:
    """Plain SGD steps of the distiller on one fixed batch; returns the weighted total per step."""
    distiller.freeze().train()
    params = list(distiller.trainable_parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    totals = []
    for _ in range(steps):
        losses = distiller(batch)
        total = weighted_total(distiller, losses)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        totals.append(total.item())
    return totals


def trainer_for(distiller, batches, save_dir, epochs: int = 2, test=None, lr: float = 0.01) -> Trainer:
    cfg = TrainConfig(epochs=epochs, lr=lr, schedule="constant", save_dir=str(save_dir), progress=False,
                      log_every=1000)
    return Trainer(distiller, batches, test, cfg, torch.device("cpu"))


def digits_teacher_ckpt(folder, arch: str = "resnet8", layout: str = "repdistiller") -> str:
    """A (randomly initialised) digits teacher saved in a seed's layout; returns its path.
    ``repdistiller``: ``<folder>/<arch>_vanilla/ckpt_epoch_240.pth`` holding ``{'model': sd}``."""
    import os

    torch.manual_seed(0)
    model = get_model(arch, num_classes=10, in_chans=1)
    if layout == "repdistiller":
        path = os.path.join(str(folder), f"{arch}_vanilla", "ckpt_epoch_240.pth")
        obj = {"model": model.state_dict(), "epoch": 240}
    else:
        path = os.path.join(str(folder), f"{arch}.pth")
        obj = model.state_dict()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)
    return path


def kd_cli(save_dir, *args: str) -> list:
    """Common kd/train.py arguments for a fast offline run on digits."""
    return ["--dataset", "digits", "--student", "lenet5_half_bn", "--batch_size", "128", "--epochs", "1",
            "--no_progress", "--device", "cpu", "--save_dir", str(save_dir), *args]
