"""multikd: an ensemble of students, following Distiller's README ("Ensemble of Students";
karanchahal/distiller ``evaluate_kd.py::test_multikd``).

``--n_students`` students (default 2) are each distilled from the teacher with Hinton KD at
the run's weights and temperature (Distiller: ``-r 0.5 -a 0.5 --kd_T 5`` under ``--recipe
distiller``); student ``i`` (1-based) is initialised under seed ``--seed + i - 1``, so the
members differ. Each student is reported on its own, and their ensemble, the mean of the
members' logits, is evaluated on the test split: its ``last_top1`` from the members' last-epoch
weights (``student<i>/last.pt``), its ``best_top1`` from their best-epoch weights (``best.pt``).

Default of 2: the smallest ensemble, at twice the cost of one KD run; it is also the size of
the ensemble in Distiller's code (its ``MultiTrainer`` averages two networks).

Deviation: Distiller's code does something else under this name: one student distilled from
the mean KL to two teachers (the given one plus a WRN22_4 read from a hard-coded path). That is
the separate distiller ``multiteacher``; this mode follows the README.

Layout: ``save_dir/student<i>/``, one resumable stage each.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from kd.modes import Mode, register_mode

DEFAULT_STUDENTS = 2


def ensemble_heads(models: Sequence[nn.Module]):
    """``heads(x)``: the ensemble (mean of the members' logits) first, then each member."""

    def heads(x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        logits = [m(x) for m in models]
        out = OrderedDict(ensemble=torch.stack(logits).mean(dim=0))
        out.update((f"student{i}", z) for i, z in enumerate(logits, 1))
        return out

    return heads


def ensemble_accuracy(models: Sequence[nn.Module], loader, device: torch.device) -> Dict[str, float]:
    """Test top-1 of the logit-averaged ensemble (``top1``) and of each member (``top1_student<i>``)."""
    from engine.trainer import evaluate_heads

    models = [m.to(device).eval() for m in models]
    return evaluate_heads(ensemble_heads(models), loader, device)


@register_mode("multikd")
class MultiKD(Mode):
    flags = ("n_students",)

    def add_arguments(self, group) -> None:
        group.add_argument("--n_students", type=int, default=None,
                           help=f"multikd: students distilled from the teacher and ensembled (default "
                                f"{DEFAULT_STUDENTS}); student i is seeded with --seed + i - 1")

    @staticmethod
    def count(args) -> int:
        return DEFAULT_STUDENTS if args.n_students is None else args.n_students

    def validate(self, ctx) -> None:
        if self.count(ctx.args) < 2:
            raise ValueError(f"--n_students {ctx.args.n_students}: an ensemble needs at least 2 students")

    def run(self, ctx, save_dir: str) -> List[dict]:
        from engine.checkpoint import load_weights
        from engine.stages import run_stages
        from engine.utils import seed_everything
        from kd.train import distill_stages, result_row

        a = ctx.args
        n = self.count(a)
        rows, folders = [], []
        for i in range(1, n + 1):
            seed = a.seed + i - 1
            folder = os.path.join(save_dir, f"student{i}")
            seed_everything(seed)
            student = ctx.model(a.student)
            if a.s_init:
                load_weights(student, a.s_init)
            stages = distill_stages(ctx, "kd", student, ctx.teacher, folder,
                                    label=f"multikd student {i}/{n} (seed {seed})")
            metrics = run_stages(stages, resume=bool(a.resume), log=ctx.info)[-1]
            row = result_row("multikd", a.student, a.teacher, ctx.teacher_top1, metrics, folder)
            row.update(stage=f"student {i} (seed {seed})", seed=seed)
            rows.append(row)
            folders.append(folder)
        top1 = {}
        for which in ("last", "best"):
            members = [load_weights(ctx.model(a.student), os.path.join(f, f"{which}.pt")) for f in folders]
            top1[which] = ensemble_accuracy(members, ctx.test_loader, ctx.device)["top1"]
        ctx.info(f"multikd: ensemble of {n} (mean logits): test top1 {top1['last']:.2f} last epoch, "
                 f"{top1['best']:.2f} from the best epochs")
        rows.append({"method": "multikd", "stage": "ensemble", "student": f"{n} x {a.student}", "teacher": a.teacher,
                     "teacher_top1": ctx.teacher_top1, "last_top1": top1["last"], "best_top1": top1["best"],
                     "epochs": rows[-1]["epochs"], "time_total": sum(r["time_total"] or 0.0 for r in rows),
                     "save_dir": save_dir, "ensemble": True, "members": folders})
        return rows
