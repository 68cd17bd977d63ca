"""kdparam: the KD temperature x weight grid (Distiller, karanchahal/distiller
``evaluate_kd.py::test_kdparam``).

Each cell (T, alpha) distils a fresh student (same initialisation in every cell: seeded with
``--seed``) with Distiller's KD loss ``(1 - alpha) CE + alpha T^2 KL(p_t^T || p_s^T)``, i.e.
``-r (1 - alpha) -a alpha -b 0 --kd_T T``. The grid Distiller meant is
T in {1, 5, 10, 15, 20} x alpha in {0.1, 0.4, 0.5, 0.7, 1.0} (25 cells, T outer);
``--kdparam_T`` and ``--kdparam_alpha`` replace either list. One row per cell (columns ``T``
and ``alpha``, in ``results.json``; the stage names both), the best cell marked.

Reference bug not copied: Distiller writes ``params_s["T_student"]: T`` (an annotation, not an
assignment), so its sweep kept T = 5 and varied alpha only. Here both vary: each cell's
distiller gets its own T and weights, and the arguments stored with the cell (``metrics.json``,
checkpoints) are the run's with ``r``, ``a``, ``b`` and ``kd_T`` set to the cell's.

Layout: ``save_dir/T<T>_a<alpha>/``, one resumable stage per cell. ``-r``, ``-a``, ``-b`` and
``--kd_T`` given on the command line are ignored (named in a warning).
"""
from __future__ import annotations

import argparse
import copy
import os
from typing import List, Tuple

from kd.modes import Mode, register_mode

KC_TEMPERATURES = (1.0, 5.0, 10.0, 15.0, 20.0)
KC_ALPHAS = (0.1, 0.4, 0.5, 0.7, 1.0)


def cell_folder(T: float, alpha: float) -> str:
    return f"T{T:g}_a{alpha:g}"


def cell_context(ctx, **overrides):
    """``ctx`` with its arguments changed by ``overrides`` (loaders, teacher and logger are
    shared), so that a cell's stages build and record the cell's values."""
    cell = copy.copy(ctx)
    cell.args = argparse.Namespace(**{**vars(ctx.args), **overrides})
    return cell


@register_mode("kdparam")
class KDParam(Mode):
    flags = ("kdparam_T", "kdparam_alpha")

    def add_arguments(self, group) -> None:
        group.add_argument("--kdparam_T", nargs="+", type=float, default=None, metavar="T",
                           help=f"kdparam: temperatures (default {' '.join(f'{t:g}' for t in KC_TEMPERATURES)})")
        group.add_argument("--kdparam_alpha", nargs="+", type=float, default=None, metavar="ALPHA",
                           help=f"kdparam: KD weights, CE gets 1 - alpha (default {' '.join(map(str, KC_ALPHAS))})")

    @staticmethod
    def grid(args) -> List[Tuple[float, float]]:
        temps = args.kdparam_T or list(KC_TEMPERATURES)
        alphas = args.kdparam_alpha or list(KC_ALPHAS)
        return [(float(T), float(alpha)) for T in temps for alpha in alphas]

    def validate(self, ctx) -> None:
        a = ctx.args
        for T in a.kdparam_T or ():
            if not T > 0:
                raise ValueError(f"--kdparam_T {T:g}: temperatures must be positive")
        for alpha in a.kdparam_alpha or ():
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"--kdparam_alpha {alpha:g}: a weight in [0, 1] (CE gets 1 - alpha)")
        folders = [cell_folder(T, alpha) for T, alpha in self.grid(a)]
        if len(set(folders)) != len(folders):
            raise ValueError("--kdparam_T / --kdparam_alpha: a value is listed twice")

    def unused_flags(self, args) -> List[str]:
        unused = [f"{flag} (kdparam sets -r 1-alpha -a alpha --kd_T T per cell)"
                  for flag, given in (("-r", args.r is not None), ("-a", args.a is not None),
                                      ("--kd_T", getattr(args, "kd_T_given", False))) if given]
        if args.b is not None and args.b != 0:
            unused.append("-b (kd has no loss of its own)")
        return unused

    def run(self, ctx, save_dir: str) -> List[dict]:
        from engine.checkpoint import load_weights
        from engine.stages import run_stages
        from engine.utils import seed_everything
        from kd.distillers import Weights
        from kd.modes.allkd import mark_best
        from kd.train import distill_stages, result_row

        a = ctx.args
        grid = self.grid(a)
        rows = []
        for i, (T, alpha) in enumerate(grid, 1):
            weights = Weights(r=round(1.0 - alpha, 12), a=alpha, b=0.0)
            cell = cell_context(ctx, r=weights.r, a=weights.a, b=weights.b, kd_T=T)
            folder = os.path.join(save_dir, cell_folder(T, alpha))
            seed_everything(a.seed)  # every cell starts from the same student
            student = ctx.model(a.student)
            if a.s_init:
                load_weights(student, a.s_init)
            stages = distill_stages(cell, "kd", student, ctx.teacher, folder, weights=weights, T=T,
                                    label=f"kdparam {i}/{len(grid)} T {T:g} alpha {alpha:g}")
            metrics = run_stages(stages, resume=bool(a.resume), log=ctx.info)[-1]
            row = result_row("kdparam", a.student, a.teacher, ctx.teacher_top1, metrics, folder)
            row.update(stage=f"T {T:g}, alpha {alpha:g}", T=T, alpha=alpha)
            rows.append(row)
        best = mark_best(rows)
        if best is not None:
            ctx.info(f"kdparam: best cell T {best['T']:g}, alpha {best['alpha']:g}: top1 {best['best_top1']:.2f}")
        return rows
