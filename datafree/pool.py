"""The transfer set: synthetic images kept on the device.

Fast-Datafree writes every synthesized batch to PNG files and builds a new 4-worker
DataLoader over the folder each round (reference-notes §1.1, §6 item 11). :class:`ImagePool`
keeps the same images in device memory instead, quantised to uint8 exactly as an 8-bit PNG
would be (or fp16 to skip the quantisation), optionally capped (oldest images dropped first),
and serves shuffled batches in the reference's order: a fresh shuffle of the whole pool after
every addition, cycled through until the next one.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F


class ImagePool:
    def __init__(self, device: torch.device, storage: str = "uint8", capacity: Optional[int] = None,
                 seed: int = 0):
        if storage not in ("uint8", "fp16"):
            raise ValueError(f"pool storage must be 'uint8' or 'fp16', got {storage!r}")
        self.device, self.storage, self.capacity = torch.device(device), storage, capacity
        self._data: Optional[torch.Tensor] = None
        self._size = 0
        self._next_slot = 0  # where the next image goes once a capped pool is full
        self._order: Optional[torch.Tensor] = None
        self._cursor = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.storage == "uint8" else torch.float16

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().clamp(0, 1)
        if self.storage == "uint8":
            return x.mul(255).add_(0.5).floor_().to(torch.uint8)  # what an 8-bit PNG stores
        return x.to(torch.float16)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255) if self.storage == "uint8" else x.float()

    def add(self, images: torch.Tensor) -> None:
        """Append a batch of images in [0, 1] (B x C x H x W)."""
        enc = self._encode(images.to(self.device))
        n = enc.shape[0]
        if self._data is None:
            cap = self.capacity or max(4 * n, 1024)
            self._data = torch.empty((cap,) + tuple(enc.shape[1:]), dtype=self.dtype, device=self.device)
        if enc.shape[1:] != self._data.shape[1:]:
            raise ValueError(f"pool holds {tuple(self._data.shape[1:])} images, got {tuple(enc.shape[1:])}")
        if self.capacity is None:
            need = self._size + n
            if need > self._data.shape[0]:  # grow geometrically
                grown = torch.empty((max(need, 2 * self._data.shape[0]),) + tuple(self._data.shape[1:]),
                                    dtype=self.dtype, device=self.device)
                grown[: self._size] = self._data[: self._size]
                self._data = grown
            self._data[self._size: need] = enc
            self._size = need
        else:
            for i in range(0, n, self.capacity):  # ring buffer: overwrite the oldest
                chunk = enc[i: i + self.capacity]
                idx = (self._next_slot + torch.arange(len(chunk), device=self.device)) % self.capacity
                self._data[idx] = chunk
                self._next_slot = (self._next_slot + len(chunk)) % self.capacity
                self._size = min(self.capacity, self._size + len(chunk))
        self._order = None  # reshuffle on the next sample, as the reference's new DataLoader does

    def images(self) -> torch.Tensor:
        """Every stored image, decoded to float in [0, 1]."""
        return self._decode(self._data[: self._size]) if self._size else torch.empty(0)

    def sample(self, n: int) -> torch.Tensor:
        """The next ``n`` images of the current shuffle, as float in [0, 1] on the device."""
        if self._size == 0:
            raise RuntimeError("the image pool is empty: synthesize before sampling")
        idx = []
        while n > 0:
            if self._order is None or self._cursor >= len(self._order):
                self._order = torch.randperm(self._size, generator=self.generator).to(self.device)
                self._cursor = 0
            take = self._order[self._cursor: self._cursor + n]
            self._cursor += len(take)
            n -= len(take)
            idx.append(take)
        return self._decode(self._data[torch.cat(idx)])

    def state_dict(self) -> dict:
        return {"data": self._data[: self.capacity or self._size] if self._data is not None else None,
                "size": self._size, "next_slot": self._next_slot, "storage": self.storage,
                "capacity": self.capacity, "order": self._order, "cursor": self._cursor,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.storage, self.capacity = state["storage"], state["capacity"]
        data = state["data"]
        self._data = data.to(self.device) if data is not None else None
        self._size, self._next_slot = state["size"], state["next_slot"]
        self._order = state["order"].to(self.device) if state["order"] is not None else None
        self._cursor = state["cursor"]
        self.generator.set_state(state["generator"])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_image_set(path: str, img_size: int, nc: int) -> torch.Tensor:
    """A pre-synthesised image set (``--cmi_init``) as float images in [0, 1], N x nc x S x S.

    ``path`` is a ``.pt`` file holding one image tensor (uint8 0..255 or float 0..1, N x C x H x W)
    or a folder searched recursively for PNG/JPEG files (the layout Fast-Datafree writes).
    """
    if os.path.isfile(path) and path.endswith(".pt"):
        x = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{path}: expected one N x C x H x W image tensor")
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    elif os.path.isdir(path):
        import numpy as np
        from PIL import Image

        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                       if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"--cmi_init: no images under {path!r}")
        mode = "L" if nc == 1 else "RGB"
        imgs = []
        for f in files:
            with Image.open(f) as im:
                a = np.asarray(im.convert(mode), dtype=np.uint8)
            imgs.append(torch.from_numpy(a.copy()).view(a.shape[0], a.shape[1], -1).permute(2, 0, 1))
        imgs = [F.interpolate(i[None].float(), size=(img_size, img_size), mode="bilinear", align_corners=False)[0]
                if i.shape[-2:] != (img_size, img_size) else i.float() for i in imgs]
        x = torch.stack(imgs).div(255)
    else:
        raise FileNotFoundError(f"--cmi_init: {path!r} is neither a .pt file nor a folder")
    if x.shape[1] != nc:
        raise ValueError(f"--cmi_init images have {x.shape[1]} channels, the teacher takes {nc}")
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)
