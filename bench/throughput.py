"""Training throughput (images/s) through the engine's two input pipelines.

For each model, runs real training steps of the shared :class:`engine.trainer.Trainer`
(cross-entropy, SGD, batch 128) fed by

* ``tensor``: :class:`engine.data.TensorLoader`, the split held as a uint8 tensor on the device,
  crop/flip/normalise per batch;
* ``pil``: the classic torchvision path, a ``DataLoader`` with per-image PIL transforms.

and prints a Markdown table. Timings synchronise the device, exclude ``--warmup`` steps and
take the median of ``--repeats`` timed windows of ``--steps`` steps. CIFAR-100 is used if
``--data_root`` holds it; otherwise a CIFAR-shaped uint8 set of random pixels stands in (the
pipeline cost does not depend on pixel values; the output says which was used).

    python -m bench.throughput                       # WRN-40-2 and ResNet-20, batch 128
    python -m bench.throughput --models resnet20 --steps 20 --json run/bench/throughput.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bench import save_json
from engine.data import BatchAugment, FixedSteps, PILLoader, TensorLoader, _PILView
from engine.objective import CrossEntropyObjective
from engine.trainer import TrainConfig, Trainer
from engine.utils import library_versions, resolve_device, seed_everything, synchronize
from registry.datasets import TensorSplit, dataset_spec, folder_transform, get_dataset
from registry.models import get_model


def cifar_split(data_root: str) -> tuple[TensorSplit, str]:
    try:
        return get_dataset("cifar100", "train", data_root, download=False), "cifar100"
    except Exception:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 100, (50000,), generator=g)
        return TensorSplit(images, labels, dataset_spec("cifar100")), "random pixels, CIFAR-100 shape"


def measure(model_name: str, pipeline: str, data: TensorSplit, args, device) -> float:
    seed_everything(0)
    model = get_model(model_name, num_classes=100)
    if pipeline == "tensor":
        loader = TensorLoader(data, args.batch_size, True, device)
    else:
        loader = PILLoader(_PILView(data, folder_transform(data.spec, True)), args.batch_size, True,
                           args.workers, pin_memory=device.type == "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(epochs=1, lr=0.05, save_dir=tmp, progress=False, log_every=10**9, amp=args.amp)
        steps = FixedSteps(loader, args.warmup)
        trainer = Trainer(CrossEntropyObjective(model), steps, None, cfg, device)
        trainer.train_one_epoch(0)  # warm-up (also starts DataLoader workers)
        steps.n = args.steps
        rates = []
        for _ in range(args.repeats):
            stats = trainer.train_one_epoch(0)  # synchronises the device before and after
            rates.append(stats["throughput"])
    return statistics.median(rates)


def augment_rates(device, batch_size: int, repeats: int = 20) -> dict:
    """Images/s of the crop+flip+normalise step alone: ours vs kornia's equivalent."""
    import kornia.augmentation as K

    spec = dataset_spec("cifar100")
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    ours = BatchAugment.for_spec(spec, train=True).to(device)
    kornia = torch.nn.Sequential(K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip(),
                                 K.Normalize(torch.tensor(spec.mean), torch.tensor(spec.std))).to(device)
    out = {}
    for name, f in (("engine gather crop/flip", ours), ("kornia RandomCrop/Flip", kornia)):
        for _ in range(3):
            f(x)
        times = []
        for _ in range(repeats):
            synchronize(device)
            t = time.perf_counter()
            f(x)
            synchronize(device)
            times.append(time.perf_counter() - t)
        out[name] = batch_size / statistics.median(times)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["wrn40_2", "resnet20"])
    p.add_argument("--pipelines", nargs="+", default=["tensor", "pil"])
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto")
    p.add_argument("--data_root", default="./data/torchdata")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    data, source = cifar_split(args.data_root)
    rows = []
    for m in args.models:
        row = {"model": m}
        for pl in args.pipelines:
            row[pl] = measure(m, pl, data, args, device)
        rows.append(row)
    aug = augment_rates(device, args.batch_size)
    print(f"\nTraining throughput, images/s (batch {args.batch_size}, {device}, data: {source}; "
          f"median of {args.repeats} x {args.steps} steps after {args.warmup} warm-up steps; "
          f"PIL path with {args.workers} workers)\n")
    print("| model | " + " | ".join(f"{pl} pipeline" for pl in args.pipelines) +
          (" | tensor / pil |" if {"tensor", "pil"} <= set(args.pipelines) else " |"))
    print("|---" * (len(args.pipelines) + 1 + ({"tensor", "pil"} <= set(args.pipelines))) + "|")
    for r in rows:
        cells = [f"{r[pl]:.0f}" for pl in args.pipelines]
        if {"tensor", "pil"} <= set(args.pipelines):
            cells.append(f"{r['tensor'] / r['pil']:.2f}x")
        print(f"| {r['model']} | " + " | ".join(cells) + " |")
    print(f"\nAugmentation alone (crop+flip+normalise, batch {args.batch_size}), images/s:")
    for k, v in aug.items():
        print(f"  {k}: {v:.0f}")
    versions = library_versions()
    print(f"\n{versions}")
    if args.json:
        save_json(args.json, {"rows": rows, "augment": aug, "data": source, "args": vars(args),
                               "versions": versions, "device": str(device)})
    return rows


if __name__ == "__main__":
    main()
