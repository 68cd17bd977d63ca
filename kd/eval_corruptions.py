"""Robustness to common corruptions: accuracy of a trained model on CIFAR-100-C / CIFAR-10-C.

    python kd/eval_corruptions.py --ckpt run/teachers/cifar100_wrn40_2/best.pt --data_root ./data
    python kd/eval_corruptions.py --ckpt S.pth --model resnet8x4 --data_root ./data/CIFAR-100-C --json out.json

Data: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019. Each ``<corruption>.npy`` holds the test set
corrupted at severities 1..5, stacked in that order (``5N x 32 x 32 x 3`` uint8, ``N`` = 10,000
for the official files); ``labels.npy`` holds the ``5N`` matching labels. ``N`` is read from the
files (length / 5), so a smaller set (as in the tests) works the same way. ``--data_root`` may
be the folder with the ``.npy`` files itself, or its parent holding ``CIFAR-100-C`` (or
``CIFAR-10-C`` for ``--dataset cifar10``).

Protocol: AugMix (``google-research/augmix``, ``cifar.py::test_c``), the usual CIFAR-C report:
the 15 corruptions pinned below (a 19-corruption variant also circulates; it is not used
here), each evaluated on all five severities with the model's training normalisation
(:func:`registry.datasets.dataset_spec`); per-corruption error = 100 - accuracy (%), and the
"mean corruption error" = 100 - 100 * mean over corruptions of the accuracy. Unlike the
ImageNet-C mCE, it is not normalised by AlexNet's errors. The clean test accuracy is evaluated
first (AugMix has to, because its ``test_c`` overwrites the test set's arrays in place; here
the clean and corrupted sets are separate, and the order is kept for the same report).

The clean CIFAR test set is read through :func:`engine.data.build_loader` from ``--data_root``
(torchvision's ``cifar-100-python`` folder; never downloaded). If it is not there, the clean
accuracy is reported as unavailable; with ``--clean_root DIR`` it is required from ``DIR``.

The architecture is ``--model``, or the one recorded in an engine checkpoint's ``args``
(``student`` for distillation runs, ``model`` for teacher runs), or what a RepDistiller /
Fast-Datafree path says (``S:<arch>_T:...``, ``<arch>_vanilla/``, ``<arch>_best.pth``,
``<dataset>_<arch>.pth``). Before anything is evaluated, the checkpoint and all 16 files
(15 corruptions + ``labels.npy``) are checked; a missing or malformed one stops the run with
one line naming it and exit code 2.

Output: a table (accuracy per severity, mean accuracy and error per corruption), the mean
corruption error, and a JSON file (``--json``; default ``corruptions_<dataset>.json`` beside
the checkpoint).
"""
from __future__ import annotations

import json
import os
import pickle
import sys
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from engine.checkpoint import load_checkpoint, load_weights  # noqa: E402
from engine.data import Normalize, build_loader  # noqa: E402
from engine.launch import run_main  # noqa: E402
from engine.trainer import evaluate  # noqa: E402
from engine.utils import library_versions, resolve_device  # noqa: E402
from registry.datasets import DatasetSpec, dataset_spec  # noqa: E402
from registry.models import canonical_name, get_model  # noqa: E402

CORRUPTIONS: Tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = 5
C_FOLDERS = {"cifar100": "CIFAR-100-C", "cifar10": "CIFAR-10-C"}
LABELS_FILE = "labels.npy"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="model checkpoint (engine best.pt/last.pt, RepDistiller .pth, ...)")
    p.add_argument("--data_root", required=True,
                   help="folder with the CIFAR-C .npy files, or its parent holding CIFAR-100-C / CIFAR-10-C; "
                        "also searched for the clean test set")
    p.add_argument("--model", default=None, help="architecture (default: from the checkpoint's args or its path)")
    p.add_argument("--dataset", default=None, choices=sorted(C_FOLDERS),
                   help="default: the checkpoint's args.dataset when it is cifar10/cifar100, else cifar100")
    p.add_argument("--clean_root", default=None,
                   help="where the clean CIFAR test set is (then it is required); default: --data_root, optional")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--json", default=None, help="output file (default: corruptions_<dataset>.json beside --ckpt)")
    return p


# ------------------------------------------------------------------------------ files
def corruption_folder(data_root: str, dataset: str) -> Tuple[str, List[str]]:
    """The folder holding the ``.npy`` files (``data_root`` or ``data_root/<CIFAR-xx-C>``: the
    first with ``labels.npy``, else the first with any corruption file), and the folders looked in."""
    looked = [data_root, os.path.join(data_root, C_FOLDERS[dataset])]
    for wanted in ([LABELS_FILE], [f"{c}.npy" for c in CORRUPTIONS]):
        for folder in looked:
            if any(os.path.isfile(os.path.join(folder, f)) for f in wanted):
                return folder, looked
    return data_root, looked


def check_files(folder: str, looked: Sequence[str], dataset: str, image_size: int) -> int:
    """Check that the 16 files exist and agree (uint8 ``5N x S x S x 3`` arrays, ``5N`` labels);
    return ``N``, the images per severity. Raises one-line errors naming the offending files."""
    names = [f"{c}.npy" for c in CORRUPTIONS] + [LABELS_FILE]
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        where = folder if len(looked) == 1 or folder != looked[0] else " or ".join(looked)
        raise FileNotFoundError(f"{C_FOLDERS[dataset]}: missing {', '.join(missing)} in {where}")
    labels = _open_npy(os.path.join(folder, LABELS_FILE))
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % SEVERITIES:
        raise ValueError(f"{os.path.join(folder, LABELS_FILE)}: expected 5N labels (5 severities), "
                         f"got shape {labels.shape}")
    for c in CORRUPTIONS:
        path = os.path.join(folder, f"{c}.npy")
        arr = _open_npy(path)
        want = (len(labels), image_size, image_size, 3)
        if arr.shape != want or arr.dtype != np.uint8:
            raise ValueError(f"{path}: expected a uint8 array of shape {want} (matching {LABELS_FILE}), "
                             f"got {arr.dtype} {arr.shape}")
    return len(labels) // SEVERITIES


def _open_npy(path: str) -> np.ndarray:
    """Memory-map a ``.npy`` file (only its header is read now)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None


# ------------------------------------------------------------------------------ model
def arch_from_path(path: str, dataset: Optional[str] = None) -> Optional[str]:
    """The architecture a RepDistiller / Fast-Datafree checkpoint path names, or ``None``:
    ``.../S:<arch>_T:<teacher>_.../`` (student runs), ``.../<arch>_best.pth`` or ``_last.pth``,
    the parent folder read as RepDistiller's ``get_teacher_name`` does (``<arch>_vanilla``,
    ``<arch>_<dataset>_lr_...``; ``wrn_40_2_...`` keeps three parts), ``<dataset>_<arch>.pth``."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    stem = os.path.splitext(os.path.basename(path))[0]
    candidates = []
    if parent.startswith("S:"):
        candidates.append(parent[2:].split("_T:")[0])
    for suffix in ("_best", "_last"):
        if stem.endswith(suffix):
            candidates.append(stem[: -len(suffix)])
    seg = parent.split("_")
    candidates.append("_".join(seg[:3]) if seg[0] == "wrn" else seg[0])
    for ds in ([dataset] if dataset else []) + sorted(C_FOLDERS):
        if stem.startswith(ds + "_"):
            candidates.append(stem[len(ds) + 1:])
    for name in candidates:
        try:
            return canonical_name(name)
        except KeyError:
            continue
    return None


def arch_from_args(ckpt_args: Mapping) -> Optional[str]:
    """The architecture an engine checkpoint's ``args`` records: ``model`` for a teacher run
    (``cifar100.py``, or a ``kd/train.py`` teacher stage), else ``student``."""
    if ckpt_args.get("stage") == "teacher" and ckpt_args.get("model"):
        return ckpt_args["model"]
    return ckpt_args.get("student") or ckpt_args.get("model")


def read_checkpoint(path: str) -> dict:
    """The checkpoint as a plain dict (``torch.load(weights_only=True)``); one-line errors."""
    try:
        ckpt = load_checkpoint(path)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) "
                         f"({str(e).splitlines()[0]})") from None
    return ckpt if isinstance(ckpt, dict) else {"state_dict": ckpt}


def resolve_arch(given: Optional[str], ckpt: Mapping, path: str, dataset: Optional[str]) -> Tuple[str, str]:
    """``(architecture, where it came from)``."""
    if given:
        return canonical_name(given), "--model"
    args = ckpt.get("args")
    if isinstance(args, Mapping):
        name = arch_from_args(args)
        if name:
            return canonical_name(name), "checkpoint args"
    name = arch_from_path(path, dataset)
    if name:
        return name, "checkpoint path"
    raise ValueError(f"cannot tell the architecture of {path}: it records no args.student/args.model and its "
                     f"path is not a RepDistiller one; pass --model")


# ------------------------------------------------------------------------------ evaluation
class ArrayBatches:
    """``(x, y)`` batches from ``N x H x W x 3`` uint8 images (numpy, may be memory-mapped),
    converted to float, scaled to [0, 1] and normalised on ``device``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 normalize: nn.Module):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.device, self.normalize = device, normalize

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.labels), self.batch_size):
            chunk = torch.from_numpy(np.array(self.images[i:i + self.batch_size])).to(self.device)  # a writable copy
            x = self.normalize(chunk.permute(0, 3, 1, 2).float().div_(255))
            y = torch.from_numpy(np.asarray(self.labels[i:i + self.batch_size], dtype=np.int64)).to(self.device)
            yield x, y


def evaluate_corruptions(model: nn.Module, folder: str, spec: DatasetSpec, per_severity: int, batch_size: int,
                         device: torch.device, log=print) -> Dict[str, dict]:
    """Top-1 (%) of ``model`` per corruption and severity (each severity's ``per_severity``
    images); a corruption's ``top1`` is the mean over its severities (= accuracy over all of them)."""
    labels = np.load(os.path.join(folder, LABELS_FILE), allow_pickle=False)
    normalize = Normalize(spec.mean, spec.std).to(device)
    results = {}
    for c in CORRUPTIONS:
        images = np.load(os.path.join(folder, f"{c}.npy"), mmap_mode="r", allow_pickle=False)
        accs = []
        for s in range(SEVERITIES):
            part = slice(s * per_severity, (s + 1) * per_severity)
            accs.append(evaluate(model, ArrayBatches(images[part], labels[part], batch_size, device, normalize),
                                 device)["top1"])
        top1 = float(np.mean(accs))
        results[c] = {"top1": top1, "error": 100.0 - top1, "severities": accs}
        log(_row(c, accs, top1))
    return results


def mean_corruption_error(results: Mapping[str, Mapping]) -> float:
    """AugMix's figure: ``100 - 100 * mean accuracy`` over the corruptions (accuracies in %)."""
    return 100.0 - float(np.mean([r["top1"] for r in results.values()]))


def _row(name: str, accs: Sequence[float], top1: float) -> str:
    return f"{name:<18}" + "".join(f"{a:>8.2f}" for a in accs) + f"{top1:>9.2f}{100 - top1:>9.2f}"


def _header() -> str:
    return f"{'corruption':<18}" + "".join(f"{'s' + str(s + 1):>8}" for s in range(SEVERITIES)) + \
        f"{'top1':>9}{'error':>9}"


def clean_accuracy(model: nn.Module, dataset: str, root: str, required: bool, batch_size: int,
                   device: torch.device) -> Tuple[Optional[dict], str]:
    """Clean test metrics through :func:`engine.data.build_loader` (never downloads), and a note.
    When the test set is missing: ``(None, why)``, or a one-line error if ``required``."""
    try:
        loader = build_loader(dataset, "test", batch_size, device, root, download=False)
    except (FileNotFoundError, RuntimeError) as e:  # torchvision: "Dataset not found or corrupted..."
        why = f"no clean {dataset} test set under {root} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        if required:
            raise FileNotFoundError(f"--clean_root: {why}") from None
        return None, why + "; pass --clean_root to point at it"
    return evaluate(model, loader, device), f"{dataset} test set from {root}"


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Check the inputs, evaluate clean then corrupted accuracy, print and write the report."""
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.ckpt):
        raise FileNotFoundError(f"no checkpoint at {args.ckpt}")
    ckpt = read_checkpoint(args.ckpt)
    ckpt_args = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else {}
    dataset = args.dataset or (ckpt_args.get("dataset") if ckpt_args.get("dataset") in C_FOLDERS else "cifar100")
    spec = dataset_spec(dataset)
    folder, looked = corruption_folder(args.data_root, dataset)
    per_severity = check_files(folder, looked, dataset, spec.image_size)
    out_path = args.json or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"corruptions_{dataset}.json")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    existing = out_dir
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):  # fail now, not after the evaluation
        raise ValueError(f"--json {out_path}: cannot write there ({existing} is not writable)")
    arch, arch_source = resolve_arch(args.model, ckpt, args.ckpt, dataset)
    model = get_model(arch, num_classes=spec.num_classes, in_chans=spec.in_chans)
    load_weights(model, ckpt)
    device = resolve_device(args.device)
    model = model.to(device).eval()
    print(f"{arch} ({arch_source}) from {args.ckpt} on {C_FOLDERS[dataset]} in {folder}: "
          f"{len(CORRUPTIONS)} corruptions x {SEVERITIES} severities x {per_severity} images, device {device}")

    clean, clean_note = clean_accuracy(model, dataset, args.clean_root or args.data_root, args.clean_root is not None,
                                       args.batch_size, device)
    print(f"clean: top1 {clean['top1']:.2f} ({clean_note})" if clean else f"clean: unavailable ({clean_note})")
    print(_header())
    results = evaluate_corruptions(model, folder, spec, per_severity, args.batch_size, device)
    mce = mean_corruption_error(results)
    mean_acc = 100.0 - mce
    print(f"{'mean':<18}{'':>{8 * SEVERITIES}}{mean_acc:>9.2f}{mce:>9.2f}")
    print(f"mean corruption error ({len(CORRUPTIONS)} corruptions): {mce:.2f}"
          + (f" | clean error {100 - clean['top1']:.2f}" if clean else ""))
    report = {
        "dataset": dataset, "benchmark": C_FOLDERS[dataset], "model": arch, "model_source": arch_source,
        "ckpt": os.path.abspath(args.ckpt), "folder": os.path.abspath(folder), "corruption_list": list(CORRUPTIONS),
        "severities": SEVERITIES, "images_per_severity": per_severity,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "clean": clean, "clean_note": clean_note,
        "corruptions": results, "mean_corruption_accuracy": mean_acc, "mean_corruption_error": mce,
        "versions": library_versions(),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out_path}")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
