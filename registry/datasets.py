"""Datasets by name, with the normalisation each teacher was trained under.

Small-image sets (``cifar10``, ``cifar100``, ``mnist``, ``svhn``, ``digits``) are returned as a
:class:`TensorSplit`: the whole split as one ``uint8`` tensor ``N x C x H x W`` plus labels, so
crop/flip/normalise run per batch on the device (:mod:`engine.data`) instead of per image in
PIL. Folder sets (``tinyimagenet``, ``imagenet``) are torchvision ``ImageFolder`` datasets with
PIL transforms for a ``DataLoader``.

Normalisation constants: CIFAR-100 and ImageNet as in RepDistiller / torchvision, CIFAR-10,
SVHN and Tiny-ImageNet as in Fast-Datafree's ``registry.py``, MNIST the usual (0.1307, 0.3081).
``digits`` constants were computed from its train split (``tests/test_datasets.py`` checks them).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_ROOT = "./data/torchdata"


class DatasetUnavailable(FileNotFoundError):
    """A dataset that is neither under ``--data_root`` nor downloadable (one-line message)."""


# where each torchvision set lives under --data_root
_EXPECTED = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "SVHN",
             "mnist": "MNIST/raw"}


def _unavailable(name: str, data_root: str, download: bool, error: BaseException) -> DatasetUnavailable:
    where = os.path.join(data_root, _EXPECTED.get(name, name))
    if not download:
        return DatasetUnavailable(
            f"{name}: not found under --data_root {data_root} (expected {where}) and --no_download is set: "
            "point --data_root at a copy, or drop --no_download to download it")
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return DatasetUnavailable(
        f"{name}: not found under --data_root {data_root} (expected {where}) and the download failed ({reason}); "
        "with no network, point --data_root at a copy")


def _torchvision(name: str, data_root: str, download: bool, make):
    """Build a torchvision dataset, turning its not-found and download failures into one line."""
    try:
        return make()
    except (RuntimeError, OSError) as e:  # "Dataset not found or corrupted", URLError, ...
        raise _unavailable(name, data_root, download, e) from None


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: classes, image geometry, normalisation and train augmentation.

    ``train_aug`` is one of ``crop_flip`` (random crop with ``pad`` + horizontal flip),
    ``crop`` (no flip: digits are not mirror-symmetric), ``none``, or ``rrc_flip``
    (RandomResizedCrop + flip, ImageNet-style folder sets).
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    train_aug: str
    pad: int = 4
    kind: str = "tensor"  # "tensor" or "folder"


_SPECS = {
    s.name: s
    for s in [
        DatasetSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "crop_flip"),
        DatasetSpec("cifar100", 100, 3, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), "crop_flip"),
        DatasetSpec("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "crop"),
        # MNIST is resized to 32x32 as in DAFL / Fast-Datafree so LeNet-5 sees its native size.
        DatasetSpec("mnist", 10, 1, 32, (0.1307,), (0.3081,), "none"),
        DatasetSpec("digits", 10, 1, 32, (0.3059,), (0.3239,), "none"),
        DatasetSpec("tinyimagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262),
                    "crop_flip", pad=8, kind="folder"),
        DatasetSpec("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                    "rrc_flip", kind="folder"),
    ]
}


# the seeds' other spellings (Fast-Datafree's registry says tiny_imagenet)
DATASET_ALIASES = {"tiny_imagenet": "tinyimagenet", "tiny-imagenet": "tinyimagenet", "tiny-imagenet-200": "tinyimagenet",
                   "CIFAR10": "cifar10", "CIFAR100": "cifar100", "MNIST": "mnist", "SVHN": "svhn"}


def list_datasets():
    return sorted(_SPECS)


def canonical_dataset(name: str) -> str:
    """The registry's spelling of ``name``; raises ``KeyError`` listing the valid names."""
    name = DATASET_ALIASES.get(name, name)
    if name not in _SPECS:
        raise KeyError(f"unknown dataset {name!r}. Valid names: {', '.join(list_datasets())} "
                       f"(also spelled: {', '.join(sorted(DATASET_ALIASES))})")
    return name


def dataset_spec(name: str) -> DatasetSpec:
    return _SPECS[canonical_dataset(name)]


@dataclass
class TensorSplit:
    """One split held in memory: ``images`` uint8 ``N x C x H x W``, ``labels`` int64 ``N``."""

    images: torch.Tensor
    labels: torch.Tensor
    spec: DatasetSpec

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("TensorSplit.images must be a uint8 N x C x H x W tensor")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)


def _resize_u8(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _read_idx(path: str) -> np.ndarray:
    """Read an IDX file (MNIST's format), plain or gzipped, without writing anything."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist(root: str, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    raw = os.path.join(root, "MNIST", "raw")
    prefix = "train" if train else "t10k"
    for ext in ("", ".gz"):  # read-only copies such as ../shared/data hold only the .gz files
        img, lab = (os.path.join(raw, f"{prefix}-{k}-idx{n}-ubyte{ext}") for k, n in (("images", 3), ("labels", 1)))
        if os.path.exists(img) and os.path.exists(lab):
            return torch.from_numpy(_read_idx(img).copy()), torch.from_numpy(_read_idx(lab).astype(np.int64))
    from torchvision.datasets import MNIST

    ds = _torchvision("mnist", root, download, lambda: MNIST(root, train=train, download=download))
    return ds.data, ds.targets


def _digits(train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, 0..16), split 80/20 per class with a
    fixed seed, scaled to 0..255 and resized to 32x32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.RandomState(0)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: len(idx) // 5])
    mask = np.zeros(len(d.target), bool)
    mask[test_idx] = True
    keep = ~mask if train else mask
    images = torch.from_numpy(d.images[keep] * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    return images, torch.from_numpy(d.target[keep].astype(np.int64))


def _tiny_imagenet_val(root: str, transform):
    """Tiny-ImageNet's val split keeps its labels in ``val_annotations.txt``."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import default_loader

    train = ImageFolder(os.path.join(root, "train"))
    ann = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.exists(ann):  # already re-arranged into class folders
        return ImageFolder(os.path.join(root, "val"), transform=transform)
    ds = ImageFolder.__new__(ImageFolder)
    with open(ann) as f:
        rows = [line.split("\t")[:2] for line in f if line.strip()]
    ds.root, ds.loader, ds.transform, ds.target_transform = root, default_loader, transform, None
    ds.classes, ds.class_to_idx = train.classes, train.class_to_idx
    ds.samples = [(os.path.join(root, "val", "images", fn), train.class_to_idx[w]) for fn, w in rows]
    ds.targets = [t for _, t in ds.samples]
    ds.imgs = ds.samples
    return ds


def folder_transform(spec: DatasetSpec, train: bool):
    """PIL transforms for folder datasets (and the PIL benchmark path)."""
    import torchvision.transforms as T

    size = spec.image_size
    if spec.train_aug == "rrc_flip":
        ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if train else [
            T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    else:
        ops = [T.Resize(size), T.CenterCrop(size)] if spec.kind == "folder" else []
        if train and spec.train_aug in ("crop", "crop_flip"):
            ops.append(T.RandomCrop(size, padding=spec.pad))
        if train and spec.train_aug == "crop_flip":
            ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + [T.ToTensor(), T.Normalize(spec.mean, spec.std)])


_TENSOR_CACHE: "dict" = {}


def get_dataset(
    name: str, split: str = "train", data_root: str = DEFAULT_DATA_ROOT, download: bool = True
) -> Union[TensorSplit, "torch.utils.data.Dataset"]:
    """Load ``split`` ('train' or 'test') of dataset ``name``.

    Torchvision sets are downloaded into ``data_root`` when missing and ``download`` is
    true; with no network, point ``data_root`` at an existing copy. Folder sets expect
    ``data_root/<name>/{train,val}``.
    """
    spec = dataset_spec(name)
    name = spec.name
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    if spec.kind == "folder":
        from torchvision.datasets import ImageFolder

        root = os.path.join(data_root, {"tinyimagenet": "tiny-imagenet-200"}.get(name, name))
        if not os.path.isdir(root):
            root = os.path.join(data_root, name)
        if not os.path.isdir(root):
            raise DatasetUnavailable(f"{name}: no image folders under --data_root {data_root} "
                                     f"(expected {root}/train and {root}/val)")
        tf = folder_transform(spec, train)
        try:
            if name == "tinyimagenet" and not train:
                return _tiny_imagenet_val(root, tf)
            return ImageFolder(os.path.join(root, "train" if train else "val"), transform=tf)
        except FileNotFoundError as e:  # a missing split folder, or one without class folders / images
            raise DatasetUnavailable(f"{name}: {str(e).strip().splitlines()[0][:200]}") from None

    key = (name, split, os.path.abspath(data_root))
    if key in _TENSOR_CACHE:  # decoded and resized once per process (read-only afterwards)
        return _TENSOR_CACHE[key]
    import torchvision.datasets as tvd

    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = _torchvision(name, data_root, download, lambda: cls(data_root, train=train, download=download))
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(ds.targets)
    elif name == "svhn":
        ds = _torchvision(name, data_root, download,
                          lambda: tvd.SVHN(os.path.join(data_root, "SVHN"), split=split, download=download))
        images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
    elif name == "mnist":
        images, labels = _mnist(data_root, train, download)
        images = images[:, None]
    elif name == "digits":
        images, labels = _digits(train)
    else:  # pragma: no cover - every tensor spec is handled above
        raise KeyError(name)
    split_data = TensorSplit(_resize_u8(images, spec.image_size), labels, spec)
    _TENSOR_CACHE[key] = split_data
    while len(_TENSOR_CACHE) > 4:  # the most recent few splits (a sweep of runs reloads the same ones)
        _TENSOR_CACHE.pop(next(iter(_TENSOR_CACHE)))
    return split_data
