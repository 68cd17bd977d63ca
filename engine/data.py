"""Batch sources for the trainer.

``TensorLoader`` keeps a whole uint8 split on the device and does random crop, flip and
normalisation per batch with tensor ops, so CIFAR-sized training is not bound by per-image
PIL work. ``build_loader`` picks it for tensor datasets and a PIL ``DataLoader`` for image
folders (or when ``pipeline='pil'`` is asked for, e.g. by the throughput benchmark).

The crop/flip here is the same transform as torchvision's ``RandomCrop(size, padding=pad)``
(zero padding in [0, 1] pixel space) followed by ``RandomHorizontalFlip``; it is written with
integer gathers instead of kornia's affine warp because that is exact (no interpolation) and
about twice as fast on CPU (``python -m bench.throughput`` prints both). RandomResizedCrop (for
ImageNet-size synthesis and CMI's local view) is one batched ``grid_sample``
(:func:`random_resized_crop`): unlike kornia's, it never reads crop boxes back to the host, so
a synthesis inner loop on a GPU does not stall on it.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from registry.datasets import DatasetSpec, TensorSplit, folder_transform, get_dataset


def random_resized_crop(x: torch.Tensor, size: Tuple[int, int], scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop`` for a batch, one box per sample, bilinear, on the
    device and differentiable w.r.t. ``x``. The box covers ``scale`` of the area with aspect
    ``ratio`` (log-uniform) at a uniform position; where a box would not fit, its sides are
    clamped to the image (torchvision re-draws up to 10 times, then centre-crops; same
    distribution whenever the box fits, which is always the case for ``ratio`` (3/4, 4/3) and
    ``scale`` up to 0.75)."""
    b, _, h, w = x.shape
    dev = x.device

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(b, device=dev, generator=generator)

    area = uniform(*scale)
    r = uniform(math.log(ratio[0]), math.log(ratio[1])).exp()
    bw = (area * r).sqrt().clamp(max=1.0)  # box width / image width
    bh = (area / r).sqrt().clamp(max=1.0)
    x0 = uniform(0.0, 1.0) * (1 - bw)  # left edge, as a fraction of the width
    y0 = uniform(0.0, 1.0) * (1 - bh)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = bw, 2 * x0 + bw - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh, 2 * y0 + bh - 1
    grid = nn.functional.affine_grid(theta, [b, x.shape[1], size[0], size[1]], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomResizedCrop(nn.Module):
    """:func:`random_resized_crop` (+ horizontal flip with probability 1/2 if ``flip``) as a module."""

    def __init__(self, size: Tuple[int, int], scale: Tuple[float, float] = (0.08, 1.0), flip: bool = False):
        super().__init__()
        self.size, self.scale, self.flip = tuple(size), tuple(scale), flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = random_resized_crop(x, self.size, self.scale)
        return random_hflip(x) if self.flip else x


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel for ``x`` in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


def random_crop(x: torch.Tensor, pad: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back to the input size at a random offset per sample.
    Differentiable with respect to ``x`` (it is a gather)."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device, generator=generator)
    rows = (oy + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (ox + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return out.gather(3, cols)


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


class BatchAugment(nn.Module):
    """Per-batch train transform on the device: crop (``pad``), flip, normalise.

    Input: float images in [0, 1] (or uint8, converted); output: normalised float.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], pad: int = 0, flip: bool = False):
        super().__init__()
        self.pad, self.flip = pad, flip
        self.normalize = Normalize(mean, std)

    @classmethod
    def for_spec(cls, spec: DatasetSpec, train: bool) -> "BatchAugment":
        aug = spec.train_aug if train else "none"
        return cls(spec.mean, spec.std, pad=spec.pad if aug in ("crop", "crop_flip") else 0,
                   flip=aug == "crop_flip")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.pad:
            x = random_crop(x, self.pad)
        if self.flip:
            x = random_hflip(x)
        return self.normalize(x)


class TensorLoader:
    """Shuffled (x, y) batches from a :class:`TensorSplit` held on ``device``.

    Shuffling uses a private CPU generator seeded by ``seed`` whose state is part of
    :meth:`state_dict`, so a resumed run draws the same order. Augmentation draws from the
    device's global RNG, which the checkpoint also restores. A state taken mid-pass (a run
    stopped between two steps) also holds the pass's start and the batches used, and the next
    pass after :meth:`load_state_dict` continues that one: same order, from the next batch.
    """

    resumable_mid_epoch = True

    def __init__(self, data: TensorSplit, batch_size: int, train: bool, device: torch.device,
                 seed: int = 0, drop_last: bool = False, with_index: bool = False, flip: Optional[bool] = None):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size, self.train, self.drop_last = batch_size, train, drop_last
        self.with_index = with_index
        self.augment = BatchAugment.for_spec(data.spec, train).to(device)
        if flip is not None and train:
            self.augment.flip = flip
        self.generator = torch.Generator().manual_seed(seed)
        self._pass: Optional[dict] = None  # while a pass runs: the shuffle state before it, batches used
        self._pending: Optional[dict] = None  # a restored mid-pass position

    def _shard_size(self) -> int:
        """Samples this rank reads per pass (all of them in a single process)."""
        from engine.distributed import current

        ctx, n = current(), len(self.labels)
        if not ctx.enabled:
            return n
        return -(-n // ctx.world_size) if self.train else len(range(ctx.rank, n, ctx.world_size))

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """A pass over the split. Its order is drawn here, when the iterator is made (not at the
        first batch), so a state taken right after ``iter()`` already belongs to the new pass."""
        n, first = len(self.labels), 0
        self._pass = None
        if self.train:
            if self._pending is not None:  # continue the pass a checkpoint was taken in
                self.generator.set_state(self._pending["start"])
                first, self._pending = self._pending["used"], None
            self._pass = {"start": self.generator.get_state(), "used": first}
            order = torch.randperm(n, generator=self.generator)  # the same on every rank: one shared shuffle
        else:
            order = torch.arange(n)
        from engine.distributed import shard

        return self._batches(shard(order, pad=self.train).to(self.images.device), first)

    def _batches(self, order: torch.Tensor, first: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(first, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.train and len(idx) < 2:  # a batch of one breaks BatchNorm
                break
            if self._pass is not None:
                self._pass["used"] = i + 1
            if self.with_index:
                yield self.augment(self.images[idx]), self.labels[idx], idx
            else:
                yield self.augment(self.images[idx]), self.labels[idx]
        self._pass = None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "pass": dict(self._pass) if self._pass else None}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._pending = state.get("pass")


class FixedSteps:
    """Exactly ``n`` batches per epoch from ``loader``, continuing across its epochs (the
    loader is re-iterated when it runs out). Used to give methods the same step budget.

    Resumable at any epoch boundary, also mid-pass of the loader: the state holds the RNGs and
    the loader's own state at the start of the current pass and how many batches of it were
    used; :meth:`load_state_dict` replays the pass up to there (the trainer restores the
    checkpoint's RNG afterwards), so a resumed run sees the batches an unbroken one would."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self._it = loader, n, None
        self._pass_start: Optional[dict] = None
        self._used = 0
        self._in_epoch = 0  # batches given in the current epoch (0 between epochs)
        self._resume_at = 0

    @property
    def resumable_mid_epoch(self) -> bool:
        """A stop between two steps can be continued exactly when the loader's own state says
        where its order stands (the tensor pipeline); a PIL ``DataLoader`` redoes the epoch."""
        return getattr(self.loader, "resumable_mid_epoch", False)

    def _loader_state(self) -> Optional[dict]:
        return self.loader.state_dict() if hasattr(self.loader, "state_dict") else None

    def _next(self):
        while True:
            if self._it is None:
                from engine.utils import get_rng_state

                rng = get_rng_state()  # before iter(): a DataLoader draws its seed there
                self._it, self._used = iter(self.loader), 0
                self._pass_start = {"rng": rng, "loader": self._loader_state()}  # the new pass's own state
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self._used += 1
            return batch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self._in_epoch, self._resume_at = self._resume_at, 0
        while self._in_epoch < self.n:
            batch = self._next()
            self._in_epoch += 1
            yield batch
        self._in_epoch = 0

    def state_dict(self) -> dict:
        mid_pass = self._it is not None
        return {"pass_start": self._pass_start if mid_pass else None, "used": self._used if mid_pass else 0,
                "loader": self._loader_state(), "in_epoch": self._in_epoch}

    def load_state_dict(self, state: dict) -> None:
        from engine.utils import set_rng_state

        self._it, self._used, self._pass_start = None, 0, None
        self._resume_at = state.get("in_epoch", 0)
        start = state.get("pass_start")
        if start is None:  # at a pass boundary: the loader goes on from its state at the checkpoint
            if state.get("loader") is not None:
                self.loader.load_state_dict(state["loader"])
            return
        set_rng_state(start["rng"])
        if start["loader"] is not None:
            self.loader.load_state_dict(start["loader"])
        self._pass_start, self._it = start, iter(self.loader)
        for _ in range(state["used"]):  # replay the used part of the pass (same order, same draws)
            next(self._it)
        self._used = state["used"]


class WithIndex(torch.utils.data.Dataset):
    """``(x, y, index)`` items from a dataset of ``(x, y)`` (CRD's memory bank needs the index)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, y, i


class _PILView(torch.utils.data.Dataset):
    """A TensorSplit seen as PIL images through torchvision transforms (the classic path)."""

    def __init__(self, data: TensorSplit, transform):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        img = self.data.images[i].permute(1, 2, 0).numpy()
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(img), int(self.data.labels[i])


class _ShardSampler(torch.utils.data.Sampler):
    """Under torchrun: this rank's share of one shuffle that every rank draws alike (the shared,
    seeded ``generator``), padded for training as ``DistributedSampler`` pads."""

    def __init__(self, n: int, train: bool, generator: torch.Generator):
        self.n, self.train, self.generator = n, train, generator

    def __iter__(self):
        from engine.distributed import shard

        order = torch.randperm(self.n, generator=self.generator) if self.train else torch.arange(self.n)
        return iter(shard(order, pad=self.train).tolist())

    def __len__(self) -> int:
        from engine.distributed import current

        ctx = current()
        return -(-self.n // ctx.world_size) if self.train else len(range(ctx.rank, self.n, ctx.world_size))


class PILLoader:
    """A ``DataLoader`` over PIL transforms, with a seeded shuffle generator for resume (and,
    under torchrun, a sampler that gives each rank its shard)."""

    def __init__(self, dataset, batch_size: int, train: bool, workers: int, seed: int = 0,
                 pin_memory: bool = False):
        from engine.distributed import current

        self.generator = torch.Generator().manual_seed(seed)
        sharded = current().enabled
        sampler = _ShardSampler(len(dataset), train, self.generator) if sharded else None
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=train and not sharded, sampler=sampler, num_workers=workers,
            pin_memory=pin_memory, generator=self.generator, drop_last=False, persistent_workers=workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self):
        return iter(self.loader)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def dataset_labels(data) -> torch.Tensor:
    """Labels of a :class:`TensorSplit` or a torchvision dataset, in index order."""
    if isinstance(data, TensorSplit):
        return data.labels
    targets = getattr(data, "targets", None)
    if targets is None:
        raise ValueError(f"{type(data).__name__} exposes no targets")
    return torch.as_tensor(targets, dtype=torch.long)


def build_loader(name: str, split: str, batch_size: int, device: torch.device, data_root: str,
                 pipeline: str = "tensor", workers: int = 4, seed: int = 0, download: bool = True,
                 with_index: bool = False, flip: Optional[bool] = None, normalization=None):
    """A batch iterator for ``split`` of dataset ``name``: a :class:`TensorLoader` for tensor
    datasets (``pipeline='tensor'``), otherwise a PIL :class:`PILLoader`. ``with_index``
    yields ``(x, y, index)``; ``flip`` overrides the dataset's horizontal flip (training only);
    ``normalization`` = (mean, std) replaces the dataset's (a teacher trained with other
    statistics, e.g. akamaster's ImageNet ones on CIFAR-10). The loader's ``labels`` attribute
    holds the split's labels in index order."""
    data = get_dataset(name, split, data_root, download)
    train = split == "train"
    labels = dataset_labels(data)
    if normalization is not None:
        from dataclasses import replace

        mean, std = (tuple(v) for v in normalization)
        if isinstance(data, TensorSplit):
            data = TensorSplit(data.images, data.labels, replace(data.spec, mean=mean, std=std))
        else:  # folder sets: their PIL transform's Normalize
            import torchvision.transforms as T

            for t in getattr(getattr(data, "transform", None), "transforms", []):
                if isinstance(t, T.Normalize):
                    t.mean, t.std = list(mean), list(std)
    if isinstance(data, TensorSplit):
        if pipeline == "tensor":
            loader = TensorLoader(data, batch_size, train, device, seed=seed, with_index=with_index, flip=flip)
            loader.labels_cpu = labels
            return loader
        if pipeline != "pil":
            raise ValueError(f"pipeline must be 'tensor' or 'pil', got {pipeline!r}")
        spec = data.spec
        if flip is not None:
            from dataclasses import replace

            aug = {("crop_flip", False): "crop", ("crop", True): "crop_flip"}.get((spec.train_aug, flip), spec.train_aug)
            spec = replace(spec, train_aug=aug)
        data = _PILView(data, folder_transform(spec, train))
    elif flip is not None and train:
        raise ValueError("overriding the horizontal flip is supported for tensor datasets only")
    if with_index:
        data = WithIndex(data)
    loader = PILLoader(data, batch_size, train, workers, seed=seed, pin_memory=device.type == "cuda")
    loader.labels_cpu = labels
    return loader
