"""The data-driven KD zoo on one equal budget: ``python -m bench.reproduce --protocol kd_mnist``.

Every registered distiller and run-level mode runs through ``kd/train.py`` on real MNIST (read
from ``../shared/data``, resized to 32x32) with the same teacher/student pair and the same
student budget: ``--epochs`` epochs of ``--steps`` steps of batch ``--batch`` (two-stage methods
add one init-stage epoch of the same length, as their own stage), SGD lr 0.05 x0.1 for the last
epoch, weight decay 5e-4, each method at its reference weights (RepDistiller's
``run_cifar_distill.sh`` and the other seeds', as each distiller declares them) and options.

Pair: ResNet-20 -> ResNet-8 (CIFAR ResNets with one input channel). Both have 16/32/64
channels at the same resolutions, so the methods that need equal shapes (FSP, SFD, PKD) run
too. The teacher is trained here first (one epoch of cifar100.py's recipe with a cosine
schedule) unless ``--teacher_ckpt`` is given; ``multiteacher`` and ``allkd`` also use a second
teacher (ResNet-14, trained the same way), ``takd`` uses ResNet-14 as the assistant. The modes
run reduced grids: ``kdparam`` over T {1, 4} x alpha {0.5, 0.9}, ``allkd`` over the two
teachers, ``multikd`` with two students.

Outputs under ``run/reproduce/kd_mnist/``: ``table.md`` (one row per run: last and best
student top-1 on the MNIST test set, median over ``--repeats`` seeds with the min-max range,
and whole-run time), ``plot.png`` (best accuracy per method, teacher and student-alone lines),
``results.json`` (every run with its command line, the medians, the settings, versions).

    python -m bench.reproduce --protocol kd_mnist                   # ~1.5 h on 2 CPU cores
    python -m bench.reproduce --protocol kd_mnist --methods kd crd dkd --repeats 3
    python -m bench.reproduce --protocol kd_mnist --steps 5 --epochs 1 --methods kd at   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import cifar100
from bench import save_json
from engine.utils import library_versions, resolve_device
from kd import train as kdtrain
from kd.distillers import get_distiller_class, list_distillers
from kd.modes import list_modes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER, TEACHER2, STUDENT = "resnet20", "resnet14", "resnet8"

# method-specific flags of the protocol (everything else: the method's own defaults)
EXTRA_FLAGS: Dict[str, List[str]] = {
    "triplet": ["--triplet_margin", "0.2"],  # no reference value exists: set explicitly, as the notes ask
    "takd": ["--ta_model", TEACHER2],
    "multikd": ["--n_students", "2"],
    "kdparam": ["--kdparam_T", "1", "4", "--kdparam_alpha", "0.5", "0.9"],
}


def protocol_methods() -> List[str]:
    return list_distillers() + list_modes()


def teacher_ckpt(name: str, out: str, args) -> str:
    """A finished teacher of ``name`` on MNIST (trained now when missing)."""
    folder = os.path.join(out, "teachers", f"mnist_{name}")
    path = os.path.join(folder, "best.pt")
    metrics = os.path.join(folder, "metrics.json")
    if os.path.exists(path) and os.path.exists(metrics):
        with open(metrics) as f:
            if json.load(f).get("status") == "finished":
                return path
    argv = ["--model", name, "--dataset", "mnist", "--data_root", args.data_root, "--epochs", "1", "--lr", "0.05",
            "--schedule", "cosine", "--batch_size", "128", "--save_dir", folder, "--no_progress", "--no_download",
            "--device", args.device, "--seed", "0"]
    print(f"[kd_mnist] training teacher {name}: python cifar100.py {' '.join(argv)}", flush=True)
    cifar100.train(argv)
    return path


def run_argv(method: str, ckpt: str, ckpt2: str, seed: int, save_dir: str, args) -> List[str]:
    argv = ["--distill", method, "--teacher", TEACHER, "--t_model_path", ckpt, "--student", STUDENT,
            "--dataset", "mnist", "--data_root", args.data_root, "--no_download", "--epochs", str(args.epochs),
            "--steps_per_epoch", str(args.steps), "--batch_size", str(args.batch), "--lr", "0.05",
            "--lr_decay_epochs", str(max(1, args.epochs - 1)), "--init_epochs", "1", "--seed", str(seed),
            "--device", args.device, "--no_progress", "--save_dir", save_dir] + EXTRA_FLAGS.get(method, [])
    if method == "multiteacher":
        argv += ["--extra_teachers", f"{TEACHER2}={ckpt2}"]
    if method == "allkd":
        argv += ["--allkd_teachers", TEACHER, TEACHER2, "--allkd_ckpts", f"{TEACHER}={ckpt}", f"{TEACHER2}={ckpt2}"]
    return argv


def run_one(method: str, ckpt: str, ckpt2: str, seed: int, out: str, args) -> List[dict]:
    save_dir = os.path.join(out, method, f"seed{seed}")
    argv = run_argv(method, ckpt, ckpt2, seed, save_dir, args)
    record = os.path.join(save_dir, "reproduce_run.json")
    if args.reuse and os.path.exists(record):
        with open(record) as f:
            old = json.load(f)
        if old.get("argv") == argv:
            return old["rows"]
    t0 = time.perf_counter()
    summary = kdtrain.run(argv)
    wall = time.perf_counter() - t0
    rows = []
    for r in summary["rows"]:
        rows.append({"method": method, "stage": r.get("stage"), "seed": seed, "last_top1": r.get("last_top1"),
                     "teacher_top1": r.get("teacher_top1") if r.get("teacher") == TEACHER else None,
                     "best_top1": r.get("best_top1"), "time_total": r.get("time_total"), "time_wall": wall,
                     "argv": argv, "extra": {k: v for k, v in r.items() if k.startswith("top1_") or k in ("T", "alpha")}})
    save_json(record, {"argv": argv, "rows": rows})
    return rows


def summarise(runs: List[dict]) -> List[dict]:
    keys = list(dict.fromkeys((r["method"], r["stage"]) for r in runs))
    out = []
    for method, stage in keys:
        mine = [r for r in runs if r["method"] == method and r["stage"] == stage]
        s = {"method": method, "stage": stage, "n": len(mine)}
        for k in ("last_top1", "best_top1", "time_total", "time_wall"):
            vals = [r[k] for r in mine if r[k] is not None]
            s[k] = statistics.median(vals) if vals else None
            if k == "best_top1":
                s["best_min"], s["best_max"] = (min(vals), max(vals)) if vals else (None, None)
        out.append(s)
    return out


def weights_label(method: str) -> str:
    if method in list_modes():
        return "mode"
    w = get_distiller_class(method).weights
    return f"r {w.r:g} a {w.a:g} b {w.b:g}"


def render(summary: List[dict], teacher_top1: float, args, seeds: List[int]) -> str:
    from bench.reproduce import fmt_time

    head = (f"Protocol `kd_mnist`: {TEACHER} (teacher, {teacher_top1:.2f}%) -> {STUDENT} on MNIST, "
            f"{args.epochs} epoch(s) x {args.steps} steps of batch {args.batch} per run (+1 init epoch for two-stage "
            f"methods), lr 0.05 (x0.1 for the last epoch), seeds {', '.join(map(str, seeds))}, device {args.device_name}. "
            "Cells: student top-1 (%) on the MNIST test set, last epoch (best epoch)"
            + (", [min-max of best]" if len(seeds) > 1 else "") + f", median over {len(seeds)} seed(s); "
            "time: the trainer's whole run (all stages of the row's run, evaluation included).")
    lines = [head, "", "| method | stage | weights (-r -a -b) | acc. last (best) | time |", "|---|---|---|---|---|"]
    for s in summary:
        acc = "-" if s["last_top1"] is None else f"{s['last_top1']:.2f} ({s['best_top1']:.2f})"
        if len(seeds) > 1 and s["best_min"] is not None:
            acc += f" [{s['best_min']:.2f}-{s['best_max']:.2f}]"
        lines.append(f"| {s['method']} | {s['stage'] or '-'} | {weights_label(s['method'])} | {acc} | "
                     f"{fmt_time(s['time_wall'])} |")
    return "\n".join(lines) + "\n"


def plot(path: str, summary: List[dict], teacher_top1: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summary if s["best_top1"] is not None]
    labels = [s["method"] + (f" ({s['stage']})" if s["stage"] else "") for s in rows]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.5))
    ax.barh(range(len(rows)), [s["best_top1"] for s in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(teacher_top1, color="k", ls="--", lw=1, label=f"teacher {teacher_top1:.2f}")
    alone = next((s for s in rows if s["method"] == "nokd"), None)
    if alone:
        ax.axvline(alone["best_top1"], color="tab:gray", ls=":", lw=1.2, label=f"student alone {alone['best_top1']:.2f}")
    lo = min(s["best_top1"] for s in rows)
    ax.set_xlim(max(0.0, lo - 5), 100)
    ax.set_xlabel("student best test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="kd_mnist", choices=["kd_mnist"])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every distiller and mode")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="steps per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data_root", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--teacher_ckpt", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=os.path.join("run", "reproduce", "kd_mnist"))
    ap.add_argument("--reuse", action="store_true", help="read back finished runs with identical settings")
    return ap


def main(argv: Optional[list] = None) -> dict:
    args = build_parser().parse_args(argv)
    valid = protocol_methods()
    methods = args.methods or valid
    unknown = [m for m in methods if m not in valid and m.lower() not in list_distillers(True)]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; valid: {', '.join(valid)}")
    methods = [m if m in list_modes() else get_distiller_class(m).name for m in methods]
    args.device_name = str(resolve_device(args.device))
    os.makedirs(args.out, exist_ok=True)
    ckpt = args.teacher_ckpt or teacher_ckpt(TEACHER, args.out, args)
    ckpt2 = teacher_ckpt(TEACHER2, args.out, args) if set(methods) & {"multiteacher", "allkd"} else ""
    seeds = [args.seed + i for i in range(args.repeats)]
    runs: List[dict] = []
    for m in methods:
        for seed in seeds:
            runs.extend(run_one(m, ckpt, ckpt2, seed, args.out, args))
            print(f"[kd_mnist] {m} seed {seed}: " + ", ".join(
                f"{r['stage'] or m} {r['last_top1']:.2f}" for r in runs if r["method"] == m and r["seed"] == seed
                and r["last_top1"] is not None), flush=True)
    teacher_top1 = next((r["teacher_top1"] for r in runs if r.get("teacher_top1") is not None), None)
    if teacher_top1 is None:  # only teacher-free methods ran: measure it here
        from engine.checkpoint import load_weights
        from engine.data import build_loader
        from engine.trainer import evaluate
        from registry.models import get_model

        device = resolve_device(args.device)
        teacher = load_weights(get_model(TEACHER, num_classes=10, in_chans=1), ckpt).to(device)
        test = build_loader("mnist", "test", 256, device, args.data_root, download=False)
        teacher_top1 = evaluate(teacher, test, device)["top1"]
    summary = summarise(runs)
    text = render(summary, teacher_top1, args, seeds)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(os.path.join(args.out, "plot.png"), summary, teacher_top1)
    result = {"protocol": "kd_mnist", "teacher": {"arch": TEACHER, "ckpt": ckpt, "top1": teacher_top1},
              "student": STUDENT, "seeds": seeds, "runs": runs, "medians": summary, "args": vars(args),
              "versions": library_versions(), "argv": list(argv) if argv is not None else sys.argv[1:]}
    save_json(os.path.join(args.out, "results.json"), result)
    print("\n" + text + f"\nwritten: {args.out}/table.md, plot.png, results.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
