"""The transfer set: synthetic images kept on the device.

Fast-Datafree writes every synthesized batch to PNG files and builds a new 4-worker
DataLoader over the folder each round (reference-notes §1.1, §6 item 11). :class:`ImagePool`
keeps the same images in device memory instead, quantised to uint8 exactly as an 8-bit PNG
would be (or fp16 to skip the quantisation), optionally capped (oldest images dropped first),
and serves shuffled batches in the reference's order: a fresh shuffle of the whole pool after
every addition, cycled through until the next one.
"""
from __future__ import annotations

from typing import Optional

import torch


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
