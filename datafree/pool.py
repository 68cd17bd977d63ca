"""The transfer set: synthetic images in a tiered store (device, then host, then disk).

Fast-Datafree writes every synthesized batch to PNG files and builds a new 4-worker
DataLoader over the folder each round. :class:`ImagePool`
keeps the same images as uint8, quantised exactly as an 8-bit PNG would be (or fp16 to skip the
quantisation), and serves shuffled batches in the reference's order: a fresh shuffle of the
whole pool after every addition, cycled through until the next one.

Where the images live: up to ``device_bytes`` on the training device (all of it by default),
then up to ``host_bytes`` in host memory (pinned when CUDA is there, so copies overlap), then
in a memory-mapped file under ``spill_dir``. The published ImageNet run accumulates about 400k
images of 224 x 224 (about 60 GB as uint8), more than any GPU holds (notes §2.4). While the
pool fits on the device, a batch is one gather there, with the shuffle kept on the device, so
sampling never waits for the host; with spilled tiers the indices are split per tier on the
host, each tier gathers its share, and the host and disk shares are copied over.

``capacity`` caps the synthesized images (the oldest are overwritten first); images added with
:meth:`add_init` (``--cmi_init``) sit in front of them and are never evicted.

Checkpoints: with ``persist_dir`` set (the trainer's ``<save_dir>/pool``), :meth:`state_dict`
writes only the slots written since the previous call, as one chunk file, and returns their
names with the pool's bookkeeping; :meth:`load_state_dict` replays the chunks in order. So
``last.pt`` stays small and every epoch adds only its new images. Without ``persist_dir`` the
state holds the stored images themselves, never the unused slots of a buffer.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoint import save_checkpoint

TIERS = ("device", "host", "disk")


class _Tier:
    """One growable image buffer: a device tensor, a host tensor (pinned on CUDA machines) or a
    memory-mapped file."""

    def __init__(self, kind: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 path: Optional[str] = None):
        self.kind, self.shape, self.dtype, self.device, self.path = kind, tuple(shape), dtype, device, path
        self.data: Optional[torch.Tensor] = None
        self._memmap = None

    @property
    def allocated(self) -> int:
        return 0 if self.data is None else self.data.shape[0]

    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()

    def ensure(self, n: int) -> None:
        """Room for ``n`` images (grows geometrically, keeping what is stored)."""
        if n <= self.allocated:
            return
        new = max(n, 2 * self.allocated, 256)
        if self.kind == "disk":
            np_dtype = np.uint8 if self.dtype == torch.uint8 else np.float16
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "ab") as f:
                f.truncate(new * int(np.prod(self.shape)) * np.dtype(np_dtype).itemsize)
            self._memmap = np.memmap(self.path, dtype=np_dtype, mode="r+", shape=(new,) + self.shape)
            self.data = torch.from_numpy(self._memmap)  # the old map's contents are in the file
            return
        pin = self.kind == "host" and torch.cuda.is_available()
        grown = torch.empty((new,) + self.shape, dtype=self.dtype,
                            device=self.device if self.kind == "device" else "cpu", pin_memory=pin)
        if self.data is not None:
            grown[: self.allocated] = self.data
        self.data = grown

    def write(self, local: torch.Tensor, images: torch.Tensor) -> None:
        self.ensure(int(local.max()) + 1)
        target = self.data.device
        self.data[local.to(target)] = images.to(target)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        if self.kind == "disk":  # sorted reads from the map, then back in the asked order
            order = torch.argsort(local)
            rows = torch.from_numpy(np.ascontiguousarray(self._memmap[local[order].numpy()]))
            out = torch.empty_like(rows)
            out[order] = rows
            return out
        return self.data[local.to(self.data.device)]

    def close(self) -> None:
        self.data, self._memmap = None, None


class ImagePool:
    def __init__(self, device: torch.device, storage: str = "uint8", capacity: Optional[int] = None,
                 seed: int = 0, device_bytes: Optional[int] = None, host_bytes: Optional[int] = None,
                 spill_dir: Optional[str] = None, persist_dir: Optional[str] = None):
        if storage not in ("uint8", "fp16"):
            raise ValueError(f"pool storage must be 'uint8' or 'fp16', got {storage!r}")
        if capacity is not None and capacity <= 0:
            raise ValueError(f"pool capacity must be positive, got {capacity}")
        self.device, self.storage, self.capacity = torch.device(device), storage, capacity
        self.device_bytes, self.host_bytes, self.spill_dir = device_bytes, host_bytes, spill_dir
        self.persist_dir = persist_dir
        self._shape: Optional[tuple] = None
        self._tiers: List[_Tier] = []
        self._limits: List[int] = []  # images per tier (the last is unbounded)
        self._size = 0
        self._n_init = 0
        self._next_slot = 0  # ring position among the synthesized slots of a capped pool
        self._order: Optional[torch.Tensor] = None
        self._cursor = 0
        self._dirty: List[torch.Tensor] = []  # slots written since the last state_dict (persisted pools)
        self._chunks: List[str] = []
        self.generator = torch.Generator().manual_seed(seed)

    # -- layout -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.storage == "uint8" else torch.float16

    @property
    def n_init(self) -> int:
        return self._n_init

    def _setup(self, shape: Sequence[int]) -> None:
        self._shape = tuple(shape)
        per_image = int(np.prod(self._shape)) * torch.empty((), dtype=self.dtype).element_size()
        dev_limit = None if self.device_bytes is None else self.device_bytes // per_image
        host_limit = None if self.host_bytes is None else self.host_bytes // per_image
        spill = os.path.join(self.spill_dir or ".", "pool_spill.bin")
        self._tiers = [_Tier("device", shape, self.dtype, self.device),
                       _Tier("host", shape, self.dtype, self.device),
                       _Tier("disk", shape, self.dtype, self.device, spill)]
        if dev_limit is None:
            self._limits = [None, 0, 0]
        elif host_limit is None:
            self._limits = [dev_limit, None, 0]
        else:
            self._limits = [dev_limit, host_limit, None]
        if self._limits[2] is None and self.spill_dir is None:
            raise ValueError("the pool's device and host budgets are set, so it spills to disk: give a spill folder "
                             "(--pool_spill_dir)")

    def _offsets(self) -> List[int]:
        out, start = [], 0
        for lim in self._limits:
            out.append(start)
            start = start + lim if lim is not None else start
        return out

    def tier_sizes(self) -> dict:
        """Images held by each tier."""
        sizes = dict.fromkeys(TIERS, 0)
        for name, lo, lim in zip(TIERS, self._offsets(), self._limits):
            hi = self._size if lim is None else min(self._size, lo + lim)
            sizes[name] = max(0, hi - lo)
        return sizes

    def memory_bytes(self) -> dict:
        """Bytes allocated by each tier (disk: the file's size)."""
        return {name: t.nbytes() for name, t in zip(TIERS, self._tiers)} if self._tiers else dict.fromkeys(TIERS, 0)

    def _on_device_only(self) -> bool:
        return self._limits[0] is None or self._size <= self._limits[0]

    # -- writing ------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x if self.storage == "uint8" else x.float().div(255).to(torch.float16)
        x = x.detach().clamp(0, 1)
        if self.storage == "uint8":
            return x.mul(255).add_(0.5).floor_().to(torch.uint8)  # what an 8-bit PNG stores
        return x.to(torch.float16)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_default_dtype()  # float32 unless a caller asked for another
        return x.to(dtype).div_(255) if self.storage == "uint8" else x.to(dtype)

    def _write(self, slots: torch.Tensor, enc: torch.Tensor) -> None:
        """Store ``enc`` at global ``slots`` (a CPU index tensor), tier by tier."""
        offs = self._offsets()
        for i, tier in enumerate(self._tiers):
            lo, lim = offs[i], self._limits[i]
            if lim == 0:
                continue
            mask = slots >= lo if lim is None else (slots >= lo) & (slots < lo + lim)
            if bool(mask.any()):
                sel = mask.nonzero().flatten()
                tier.write(slots[sel] - lo, enc[sel.to(enc.device)])
        if self.persist_dir is not None:
            self._dirty.append(slots)

    def _check_shape(self, enc: torch.Tensor) -> None:
        if self._shape is None:
            self._setup(enc.shape[1:])
        if tuple(enc.shape[1:]) != self._shape:
            raise ValueError(f"pool holds {self._shape} images, got {tuple(enc.shape[1:])}")

    def add_init(self, images: torch.Tensor) -> None:
        """Append pre-synthesised images (``--cmi_init``; uint8 or float in [0, 1]) in front of the
        synthesized ones. They are never evicted by ``capacity``."""
        if self._size != self._n_init:
            raise RuntimeError("initial images must be added before any synthesized batch")
        enc = self._encode(images)
        self._check_shape(enc)
        slots = torch.arange(self._size, self._size + enc.shape[0])
        self._write(slots, enc)
        self._size += enc.shape[0]
        self._n_init = self._size
        self._order = None

    def add(self, images: torch.Tensor) -> None:
        """Append a batch of images in [0, 1] (B x C x H x W); in a capped pool, overwrite the oldest
        synthesized ones."""
        enc = self._encode(images.to(self.device) if images.device != self.device else images)
        self._check_shape(enc)
        n = enc.shape[0]
        if self.capacity is None:
            slots = torch.arange(self._size, self._size + n)
            self._size += n
        else:
            if n > self.capacity:  # only the newest `capacity` images of the batch can stay
                enc, n = enc[-self.capacity:], self.capacity
            ring = (self._next_slot + torch.arange(n)) % self.capacity
            slots = self._n_init + ring
            self._next_slot = (self._next_slot + n) % self.capacity
            self._size = self._n_init + min(self.capacity, self._size - self._n_init + n)
        self._write(slots, enc)
        self._order = None  # reshuffle on the next sample, as the reference's new DataLoader does

    # -- reading ------------------------------------------------------------------------
    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Stored images at global indices ``idx`` (CPU), on the device, in that order."""
        offs = self._offsets()
        out = None
        for i, tier in enumerate(self._tiers):
            lo, lim = offs[i], self._limits[i]
            if lim == 0 or tier.data is None:
                continue
            mask = idx >= lo if lim is None else (idx >= lo) & (idx < lo + lim)
            if not bool(mask.any()):
                continue
            pos = mask.nonzero().flatten()
            part = tier.gather(idx[pos] - lo)
            if out is None:
                out = torch.empty((len(idx),) + self._shape, dtype=self.dtype, device=self.device)
            out[pos.to(self.device)] = part.to(self.device, non_blocking=True)
        return out

    def images(self) -> torch.Tensor:
        """Every stored image, decoded to float in [0, 1] (small pools: tests, grids)."""
        if not self._size:
            return torch.empty(0)
        return self._decode(self._gather(torch.arange(self._size)))

    def iter_uint8(self, chunk: int = 1024) -> Iterator[torch.Tensor]:
        """Every stored image in pool order (initial images first), as uint8 CPU chunks of at most
        ``chunk`` (one chunk in memory at a time, whatever the tier)."""
        for i in range(0, self._size, chunk):
            part = self._gather(torch.arange(i, min(i + chunk, self._size)))
            if part.dtype != torch.uint8:
                part = part.float().clamp(0, 1).mul(255).add_(0.5).floor_().to(torch.uint8)
            yield part.cpu()

    def sample(self, n: int) -> torch.Tensor:
        """The next ``n`` images of the current shuffle, as float in [0, 1] on the device."""
        if self._size == 0:
            raise RuntimeError("the image pool is empty: synthesize before sampling")
        device_only = self._on_device_only()
        idx = []
        while n > 0:
            if self._order is None or self._cursor >= len(self._order):
                order = torch.randperm(self._size, generator=self.generator)
                self._order = order.to(self.device) if device_only else order
                self._cursor = 0
            take = self._order[self._cursor: self._cursor + n]
            self._cursor += len(take)
            n -= len(take)
            idx.append(take)
        idx = torch.cat(idx)
        if device_only:  # one gather on the device, no host round trip
            return self._decode(self._tiers[0].data[idx.to(self._tiers[0].data.device)])
        return self._decode(self._gather(idx.cpu()))

    # -- checkpoints ----------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"size": self._size, "n_init": self._n_init, "next_slot": self._next_slot, "storage": self.storage,
                "capacity": self.capacity, "shape": self._shape,
                "order": self._order.cpu() if self._order is not None else None, "cursor": self._cursor,
                "generator": self.generator.get_state()}

    def state_dict(self) -> dict:
        state = self._meta()
        if self.persist_dir is None:
            state["data"] = self._gather(torch.arange(self._size)).cpu() if self._size else None
            return state
        if self._dirty:  # write the slots touched since the last call, as one chunk
            slots = torch.unique(torch.cat(self._dirty))
            name = f"chunk_{len(self._chunks):06d}.pt"
            # atomic, as every checkpoint file: a kill mid-write leaves no half chunk under this name
            save_checkpoint({"slots": slots, "images": self._gather(slots).cpu()}, os.path.join(self.persist_dir, name))
            self._chunks.append(name)
            self._dirty = []
        state.update(dir=os.path.abspath(self.persist_dir), chunks=list(self._chunks))
        return state

    def load_state_dict(self, state: dict) -> None:
        for t in self._tiers:
            t.close()
        self.storage, self.capacity = state["storage"], state["capacity"]
        self._tiers, self._shape, self._dirty = [], None, []
        persist, self.persist_dir = self.persist_dir, None  # replaying is not a new write
        try:
            if state.get("chunks") is not None:
                for name in state["chunks"]:
                    path = self._chunk_path(state["dir"], name)
                    chunk = torch.load(path, map_location="cpu", weights_only=True)
                    self._check_shape(chunk["images"])
                    self._write(chunk["slots"], chunk["images"])
                self._chunks = list(state["chunks"])
            elif state.get("data") is not None:
                data = state["data"]
                self._check_shape(data)
                self._write(torch.arange(data.shape[0]), data)
                self._chunks = []
        finally:
            self.persist_dir = persist
        elsewhere = state.get("chunks") is None or (persist is not None and os.path.abspath(persist) != state["dir"])
        if persist is not None and elsewhere and state["size"]:
            # a full-state checkpoint, or chunks in another run's folder: persist the whole pool here
            # on the next save, so this run's checkpoints never depend on another folder
            self._dirty, self._chunks = [torch.arange(state["size"])], []
        self._size, self._n_init, self._next_slot = state["size"], state.get("n_init", 0), state["next_slot"]
        order = state["order"]
        self._order = None if order is None else (order.to(self.device) if self._on_device_only() else order.cpu())
        self._cursor = state["cursor"]
        self.generator.set_state(state["generator"])

    def _chunk_path(self, folder: str, name: str) -> str:
        for d in (self.persist_dir, folder):
            if d is not None and os.path.exists(os.path.join(d, name)):
                return os.path.join(d, name)
        raise FileNotFoundError(f"the checkpoint's image pool chunk {name} is missing (looked in {folder}"
                                f"{' and ' + self.persist_dir if self.persist_dir else ''})")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _resize_uint8(x: torch.Tensor, img_size: int) -> torch.Tensor:
    """Bilinear resize of a uint8 batch to ``img_size``, rounded back to uint8 (one chunk at a time)."""
    if x.shape[-2:] == (img_size, img_size):
        return x
    y = F.interpolate(x.float(), size=(img_size, img_size), mode="bilinear", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def iter_image_set(path: str, img_size: int, nc: int, chunk: int = 1024) -> Iterator[torch.Tensor]:
    """A pre-synthesised image set (``--cmi_init``) streamed as uint8 chunks (n x nc x S x S), so no
    float copy of the whole set is ever made.

    ``path`` is a ``.pt`` file holding one image tensor (uint8 0..255 or float 0..1, N x C x H x W;
    memory-mapped, not read whole) or a folder searched recursively for PNG/JPEG files (the layout
    Fast-Datafree writes)."""
    if os.path.isfile(path) and path.endswith(".pt"):
        x = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{path}: expected one N x C x H x W image tensor")
        if x.shape[1] != nc:
            raise ValueError(f"--cmi_init images have {x.shape[1]} channels, the teacher takes {nc}")
        for i in range(0, x.shape[0], chunk):
            part = x[i: i + chunk]
            if part.dtype != torch.uint8:
                part = part.float().clamp(0, 1).mul(255).add_(0.5).floor_().to(torch.uint8)
            yield _resize_uint8(part, img_size)
        return
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--cmi_init: {path!r} is neither a .pt file nor a folder")
    from PIL import Image

    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"--cmi_init: no images under {path!r}")
    mode = "L" if nc == 1 else "RGB"
    batch: List[torch.Tensor] = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im.convert(mode), dtype=np.uint8)
        img = torch.from_numpy(a.copy()).view(a.shape[0], a.shape[1], -1).permute(2, 0, 1)
        batch.append(_resize_uint8(img[None], img_size)[0])
        if len(batch) == chunk:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def export_image_set(pool: "ImagePool", path: str) -> int:
    """Write the pool's images where :func:`iter_image_set` (``--cmi_init``) and the reference's
    ``--cmi_init`` folder reader take them back: ``path`` ending in ``.pt`` gets one uint8
    N x C x H x W tensor; any other ``path`` becomes a folder of PNGs (``000000.png`` ...), written
    a chunk at a time. Returns the number of images."""
    if path.endswith(".pt"):
        from engine.checkpoint import save_checkpoint

        images = torch.cat(list(pool.iter_uint8())) if len(pool) else torch.empty(0, dtype=torch.uint8)
        save_checkpoint(images, path)
        return len(images)
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    n = 0
    for part in pool.iter_uint8():
        arr = part.permute(0, 2, 3, 1).numpy()
        for img in arr:
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(path, f"{n:06d}.png"))
            n += 1
    return n


def load_image_set(path: str, img_size: int, nc: int) -> torch.Tensor:
    """The whole of :func:`iter_image_set` as float images in [0, 1] (small sets; the trainer
    streams instead)."""
    return torch.cat(list(iter_image_set(path, img_size, nc))).float().div_(255)
