"""The paper's accuracy-versus-time comparison (Fang et al., AAAI-22, Tables 1-2), on a protocol
that runs on a laptop-class CPU.

``--protocol mnist``: real MNIST (``../shared/data`` by default), a LeNet-5-BN teacher trained
here, a LeNet-5-half-BN student, and every data-free method of the engine next to two
real-data references, all with the **same KD budget** (``(epochs - warmup) * steps`` student
steps of batch ``batch``, the same SGD + cosine schedule, KL at T = 20):

* ``kd (real data)``: the same KD loss on real training images (no labels);
* ``student alone``: cross-entropy on the real labels.

Data-free settings are the reference ones, scaled to this budget and written in
:data:`MNIST_METHODS` (every generator at half the published width, ``ngf 32``). Output, under
``run/reproduce/<protocol>/``: ``table.md`` (last/best student accuracy on the real test set,
synthesis time, total time, speed-up of synthesis relative to DeepInversion), ``plot.png``
(best accuracy against synthesis time) and ``results.json`` (everything, with versions).

    python -m bench.reproduce --protocol mnist                 # about 25 minutes on 2 CPU cores
    python -m bench.reproduce --protocol mnist --methods fast_meta deepinv --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import cifar100
from engine.data import FixedSteps, build_loader
from engine.logger import RunLogger
from engine.objective import CrossEntropyObjective
from engine.checkpoint import load_weights
from engine.trainer import TrainConfig, Trainer
from engine.utils import library_versions, resolve_device, seed_everything
from kd import faster_data_free_kd as dfkd
from kd.distillers import KD
from registry.datasets import dataset_spec
from registry.models import get_model

COMMON_SYNTH = ["--bn_mmt", "0.9", "--ngf", "32"]
# method -> (label, flags). kd_steps / g_steps follow each reference script, scaled to the
# protocol's epoch: pool methods run 2 rounds per epoch (kd_steps "half" of the epoch's steps),
# generative ones their own KD-steps-per-G-step ratio (5, or 10 for DFQ).
MNIST_METHODS: Dict[str, tuple] = {
    "fast_meta": ("Fast-5 (fast_meta)", ["--g_steps", "5", "--lr_g", "3e-3", "--lr_z", "0.01", "--adv", "1.0",
                                         "--bn", "10", "--oh", "0.5", "--kd_steps", "half"]),
    "fast": ("fast (no meta)", ["--g_steps", "5", "--lr_g", "3e-3", "--lr_z", "0.01", "--adv", "1.0",
                                "--bn", "10", "--oh", "0.5", "--kd_steps", "half"]),
    "deepinv": ("DeepInv-1k", ["--g_steps", "1000", "--lr_g", "0.1", "--adv", "1", "--bn", "10", "--oh", "1",
                               "--kd_steps", "half"]),
    "cmi": ("CMI-100", ["--g_steps", "100", "--lr_g", "1e-3", "--adv", "0.5", "--bn", "1", "--oh", "1",
                        "--cr", "0.8", "--cr_T", "0.2", "--kd_steps", "half"]),
    "dafl": ("DAFL", ["--g_steps", "1", "--lr_g", "1e-3", "--oh", "1", "--act", "0.001", "--balance", "20",
                      "--kd_steps", "5"]),
    "zskt": ("ZSKT", ["--g_steps", "1", "--lr_g", "1e-3", "--adv", "1", "--kd_steps", "5"]),
    "dfad": ("DFAD", ["--g_steps", "1", "--lr_g", "1e-3", "--adv", "1", "--kd_steps", "5", "--T", "1"]),
    "dfq": ("DFQ", ["--g_steps", "1", "--lr_g", "1e-3", "--adv", "1", "--bn", "1", "--oh", "1", "--balance", "20",
                    "--kd_steps", "10"]),
}
REFERENCES = ("kd_real", "student")
PROTOCOLS = {
    "mnist": dict(dataset="mnist", teacher="lenet5_bn", student="lenet5_half_bn", teacher_epochs=1, teacher_lr=0.05,
                  epochs=6, warmup=1, steps=40, batch=128, lr=0.1, T=20.0, methods=MNIST_METHODS),
}


def train_teacher(p: dict, args, out: str) -> str:
    path = args.teacher_ckpt or os.path.join(out, "teacher", "best.pt")
    if not os.path.exists(path):
        cifar100.train(["--model", p["teacher"], "--dataset", p["dataset"], "--epochs", str(p["teacher_epochs"]),
                        "--lr", str(p["teacher_lr"]), "--schedule", "cosine", "--data_root", args.data_root,
                        "--no_download", "--save_dir", os.path.dirname(path), "--no_progress", "--seed", str(args.seed)])
    return path


def run_datafree(method: str, p: dict, args, ckpt: str, out: str) -> dict:
    flags = list(p["methods"][method][1])
    i = flags.index("--kd_steps")
    flags[i + 1] = str(p["steps"] // 2 if flags[i + 1] == "half" else min(int(flags[i + 1]), p["steps"]))
    if args.g_scale != 1.0:  # shrink synthesis for smoke runs: g_steps x g_scale (at least 1)
        i = flags.index("--g_steps")
        flags[i + 1] = str(max(1, int(int(flags[i + 1]) * args.g_scale)))
    argv = ["--method", method, "--teacher", p["teacher"], "--student", p["student"], "--dataset", p["dataset"],
            "--data_root", args.data_root, "--no_download", "--teacher_ckpt", ckpt, "--no_progress",
            "--lr", str(p["lr"]), "--T", str(p["T"]), "--warmup", str(p["warmup"]), "--epochs", str(p["epochs"]),
            "--ep_steps", str(p["steps"]), "--batch_size", str(p["batch"]), "--synthesis_batch_size", str(p["batch"]),
            "--seed", str(args.seed), "--save_dir", os.path.join(out, method), "--device", args.device,
            *COMMON_SYNTH, *flags]
    m = dfkd.run(argv)
    return {"method": method, "label": p["methods"][method][0], "last_top1": m["last_top1"],
            "best_top1": m["best_top1"], "time_synthesis": m["time_synthesis"], "time_total": m["time_total"]}


def run_real(kind: str, p: dict, args, ckpt: str, out: str) -> dict:
    """KD on real images, or the student alone, with the data-free runs' KD budget."""
    seed_everything(args.seed)
    device = resolve_device(args.device)
    spec = dataset_spec(p["dataset"])
    student = get_model(p["student"], num_classes=spec.num_classes, in_chans=spec.in_chans)
    if kind == "kd_real":
        teacher = load_weights(get_model(p["teacher"], num_classes=spec.num_classes, in_chans=spec.in_chans), ckpt)
        objective, label = KD(student, teacher, T=p["T"], alpha=1.0, gamma=0.0), "KD (real data)"
    else:
        objective, label = CrossEntropyObjective(student), "student alone (real labels)"
    train = build_loader(p["dataset"], "train", p["batch"], device, args.data_root, seed=args.seed, download=False)
    test = build_loader(p["dataset"], "test", 256, device, args.data_root, download=False)
    save_dir = os.path.join(out, kind)
    cfg = TrainConfig(epochs=p["epochs"] - p["warmup"], lr=p["lr"], weight_decay=1e-4, schedule="cosine",
                      eta_min=2e-4, save_dir=save_dir, progress=False)
    logger = RunLogger(save_dir, name=kind)
    # KD with gamma = 0 ignores the labels: the same loss as the data-free runs, on real images
    trainer = Trainer(objective, FixedSteps(train, p["steps"]), test, cfg, device, logger)
    m = trainer.fit()
    logger.close()
    return {"method": kind, "label": label, "last_top1": m["last_top1"], "best_top1": m["best_top1"],
            "time_synthesis": 0.0, "time_total": m["time_total"]}


def write_outputs(rows: List[dict], teacher_top1: float, p: dict, args, out: str) -> str:
    base = next((r["time_synthesis"] for r in rows if r["method"] == "deepinv"), None)
    lines = [f"Protocol `{args.protocol}`: teacher {p['teacher']} {teacher_top1:.2f}% -> student {p['student']}, "
             f"{(p['epochs'] - p['warmup']) * p['steps']} KD steps of batch {p['batch']} each "
             f"({p['epochs']} epochs, {p['warmup']} warm-up), seed {args.seed}.", "",
             "| method | student acc. last (best) | synthesis time | total time | synthesis speed-up vs DeepInv |",
             "|---|---|---|---|---|"]
    for r in rows:
        speed = "-"
        if base and r["time_synthesis"] > 0:
            speed = f"{base / r['time_synthesis']:.1f}x"
        syn = f"{r['time_synthesis']:.1f} s" if r["time_synthesis"] > 0 else "-"
        lines.append(f"| {r['label']} | {r['last_top1']:.2f} ({r['best_top1']:.2f}) | {syn} | "
                     f"{r['time_total']:.1f} s | {speed} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["time_synthesis"] > 0:
            ax.scatter(r["time_synthesis"], r["best_top1"], s=40)
            ax.annotate(r["label"], (r["time_synthesis"], r["best_top1"]), textcoords="offset points", xytext=(5, 3),
                        fontsize=8)
    ax.axhline(teacher_top1, color="k", ls="--", lw=1, label=f"teacher {teacher_top1:.2f}")
    for r in rows:
        if r["method"] in REFERENCES:
            ax.axhline(r["best_top1"], ls=":", lw=1, label=f"{r['label']} {r['best_top1']:.2f}",
                       color="tab:green" if r["method"] == "kd_real" else "tab:gray")
    ax.set_xscale("log")
    ax.set_xlabel("synthesis time (s, log scale)")
    ax.set_ylabel("student best test accuracy (%)")
    ax.set_title(f"{args.protocol}: accuracy vs synthesis time ({p['teacher']} -> {p['student']})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "plot.png"), dpi=120)
    plt.close(fig)
    return table


def main(argv: Optional[list] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="mnist", choices=sorted(PROTOCOLS))
    ap.add_argument("--methods", nargs="+", default=None, help="subset of the protocol's methods (and kd_real, student)")
    ap.add_argument("--data_root", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       "..", "shared", "data"))
    ap.add_argument("--out", default=None, help="default run/reproduce/<protocol>")
    ap.add_argument("--teacher_ckpt", default=None, help="reuse a trained teacher")
    ap.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs (budget knob)")
    ap.add_argument("--steps", type=int, default=None, help="override KD steps per epoch (budget knob)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--g_scale", type=float, default=1.0, help="multiply every method's g_steps (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    p = dict(PROTOCOLS[args.protocol])
    for k in ("epochs", "steps", "batch"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    names = args.methods or list(p["methods"]) + list(REFERENCES)
    unknown = [n for n in names if n not in p["methods"] and n not in REFERENCES]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; valid: {', '.join(list(p['methods']) + list(REFERENCES))}")
    out = args.out or os.path.join("run", "reproduce", args.protocol)
    os.makedirs(out, exist_ok=True)
    ckpt = train_teacher(p, args, out)
    spec = dataset_spec(p["dataset"])
    from engine.trainer import evaluate

    device = resolve_device(args.device)
    teacher = load_weights(get_model(p["teacher"], num_classes=spec.num_classes, in_chans=spec.in_chans), ckpt)
    teacher_top1 = evaluate(teacher.to(device), build_loader(p["dataset"], "test", 256, device, args.data_root,
                                                             download=False), device)["top1"]
    rows = []
    for n in names:
        rows.append(run_real(n, p, args, ckpt, out) if n in REFERENCES else run_datafree(n, p, args, ckpt, out))
        print(f"[reproduce] {rows[-1]}", flush=True)
    table = write_outputs(rows, teacher_top1, p, args, out)
    result = {"protocol": args.protocol, "teacher_top1": teacher_top1, "rows": rows,
              "settings": {k: v for k, v in p.items() if k != "methods"},
              "method_flags": {k: v[1] for k, v in p["methods"].items()}, "common_flags": COMMON_SYNTH,
              "args": vars(args), "versions": library_versions()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("\n" + table + f"\nwritten: {out}/table.md, {out}/plot.png, {out}/results.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
