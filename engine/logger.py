"""Run logging: console + ``log.txt``, TensorBoard scalars and image grids, ``metrics.json``."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Mapping, Optional, Sequence

import torch


class RunLogger:
    """One per run, writing into ``save_dir``.

    ``info`` goes to the console and ``save_dir/log.txt``; ``scalars`` to TensorBoard
    (``tensorboard --logdir <save_dir>``); ``write_json`` rewrites a JSON file atomically.
    Under torchrun only rank 0's logger writes; the other ranks' loggers are silent.
    """

    def __init__(self, save_dir: str, name: str = "run", tensorboard: bool = True, console: bool = True,
                 wandb_project: Optional[str] = None, config: Optional[Mapping] = None):
        from engine.distributed import is_main

        self.save_dir = save_dir
        self.silent = not is_main()
        self.log = logging.getLogger(f"fastdfkd.{name}.{os.path.abspath(save_dir)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
        self.writer = None
        self.wandb = None
        if self.silent:
            self.log.addHandler(logging.NullHandler())
            return
        os.makedirs(save_dir, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        fh = logging.FileHandler(os.path.join(save_dir, "log.txt"))
        fh.setFormatter(fmt)
        self.log.addHandler(fh)
        if console:
            ch = logging.StreamHandler(sys.stdout)
            ch.setFormatter(logging.Formatter("%(message)s"))
            self.log.addHandler(ch)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=save_dir)
        if wandb_project:
            self.wandb = start_wandb(wandb_project, save_dir, name, config)

    def info(self, msg: str) -> None:
        self.log.info(msg)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def image_grid(self, tag: str, images: torch.Tensor, step: int, path: Optional[str] = None, nrow: int = 16,
                   labels: Optional[Sequence[int]] = None) -> None:
        """Save a grid of [0, 1] images as PNG (``path``) and to TensorBoard; ``labels`` (one per
        image, e.g. the teacher's predicted class) are written in each tile's top-left corner."""
        if self.silent:
            return
        import torchvision.utils as vutils

        grid = vutils.make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow)
        if labels is not None:
            grid = label_tiles(grid, labels, images.shape[-2], images.shape[-1], nrow)
        if path:
            vutils.save_image(grid, path)
        if self.writer is not None:
            self.writer.add_image(tag, grid, step)

    def write_json(self, filename: str, obj) -> str:
        path = os.path.join(self.save_dir, filename)
        if self.silent:
            return path
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
        return path

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """An expected error (bad input found late, divergence) also ends up in ``log.txt`` as the
        same one line the console shows; the logger is closed either way."""
        if exc is not None:
            from engine.launch import EXPECTED_ERRORS, error_line

            if isinstance(exc, EXPECTED_ERRORS):  # the console gets it once, from run_main, on stderr
                record = self.log.makeRecord(self.log.name, logging.ERROR, __file__, 0, f"error: {error_line(exc)}",
                                             None, None)
                for h in self.log.handlers:
                    if isinstance(h, logging.FileHandler):
                        h.handle(record)
        self.close()
        return False

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.writer is not None:
            self.writer.close()
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)


def label_tiles(grid: torch.Tensor, labels: Sequence[int], h: int, w: int, nrow: int, pad: int = 2) -> torch.Tensor:
    """``grid`` (3 x H x W, make_grid's layout) with each tile's label drawn in its top-left corner,
    white on a black box (PIL's built-in bitmap font)."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for i, label in enumerate(labels):
        x, y = pad + (i % nrow) * (w + pad), pad + (i // nrow) * (h + pad)
        text = str(int(label))
        box = draw.textbbox((x, y), text)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def start_wandb(project: str, save_dir: str, name: str, config: Optional[Mapping] = None):
    """``--wandb PROJECT``: a Weights & Biases run beside TensorBoard, its files under ``save_dir``.
    Without an API key (``WANDB_API_KEY`` or a ``wandb login``) it runs offline (``wandb sync``
    uploads it later); ``WANDB_MODE`` set by the user wins."""
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb: wandb is not installed (pip install wandb)") from None
    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        has_key = bool(os.environ.get("WANDB_API_KEY")) or os.path.exists(os.path.expanduser("~/.netrc"))
        mode = "online" if has_key else "offline"
    return wandb.init(project=project, dir=save_dir, name=f"{name}:{os.path.basename(os.path.abspath(save_dir))}",
                      config=dict(config or {}), mode=mode, reinit=True)
