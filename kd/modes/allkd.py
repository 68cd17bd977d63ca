"""allkd: a sweep of teachers, each distilled into a fresh student with Hinton KD (Distiller,
karanchahal/distiller ``evaluate_kd.py::test_allkd``).

For every teacher in ``--allkd_teachers`` (default Distiller's list: resnet8, resnet14,
resnet20, resnet26, resnet32, resnet44, resnet56) the teacher's weights are loaded, or, when
none are found, the teacher is trained from scratch with the run's recipe (as Distiller's
``setup_teacher`` does); then a fresh student (same initialisation for every teacher: seeded
with ``--seed``) is distilled from it with KD at the run's weights and temperature (Distiller:
``-r 0.5 -a 0.5 --kd_T 5`` under ``--recipe distiller``). One row per teacher reports the
teacher's test top-1 and its student's; the row whose student scores best is marked. It is a
sweep, not an ensemble: no teacher outputs are averaged (that is ``multiteacher``).

Checkpoints (``--allkd_ckpts``): entries ``ARCH=PATH`` name one teacher's weights; any other
entry is a folder searched, for each teacher, for (first match wins) :data:`CKPT_LAYOUTS`:
``<dataset>_<arch>/best.pt`` (what ``cifar100.py`` writes), ``<arch>.pth``,
``<dataset>_<arch>.pth`` (Fast-Datafree) and ``<arch>_vanilla/ckpt_epoch_240.pth``
(RepDistiller), under the name as given and its canonical one (``resnet26`` is registered as
``kc_resnet26``). Without the flag the folder is ``run/teachers``.

Layout: ``save_dir/<teacher>/`` holds the student's stage, ``save_dir/<teacher>/teacher/``
a teacher trained here; each is its own resumable stage.

Deviations from Distiller: its ``test_allkd`` hands the single ``--teacher-checkpoint`` to
every teacher of the list (only one architecture can fit it); here each teacher has its own
checkpoint. Every name and checkpoint is checked (and each checkpoint fitted to its
architecture) before anything is written.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from kd.modes import Mode, register_mode

KC_TEACHERS = ("resnet8", "resnet14", "resnet20", "resnet26", "resnet32", "resnet44", "resnet56")
CKPT_LAYOUTS = ("{dataset}_{arch}/best.pt", "{arch}.pth", "{dataset}_{arch}.pth", "{arch}_vanilla/ckpt_epoch_240.pth")
DEFAULT_CKPT_DIR = os.path.join("run", "teachers")


def mark_best(rows: List[dict]) -> Optional[dict]:
    """Flag the row with the highest ``best_top1`` (``best`` True, `` (best)`` added to its
    stage) among ``rows`` of one mode; returns it."""
    scored = [r for r in rows if r.get("best_top1") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["best_top1"])
    for r in rows:
        r["best"] = r is best
    best["stage"] = f"{best.get('stage') or best['method']} (best)"
    return best


def find_checkpoint(names: Sequence[str], dataset: str, folders: Sequence[str]) -> Optional[str]:
    """The first file of :data:`CKPT_LAYOUTS` for any spelling in ``names`` of one
    architecture, in ``folders``; None: none."""
    for folder in folders:
        for layout in CKPT_LAYOUTS:
            for arch in names:
                path = os.path.join(folder, layout.format(dataset=dataset, arch=arch))
                if os.path.isfile(path):
                    return path
    return None


@register_mode("allkd")
class AllKD(Mode):
    flags = ("allkd_teachers", "allkd_ckpts")

    def add_arguments(self, group) -> None:
        group.add_argument("--allkd_teachers", nargs="+", default=None, metavar="ARCH",
                           help=f"allkd: the teachers to sweep (default {' '.join(KC_TEACHERS)})")
        group.add_argument("--allkd_ckpts", nargs="+", default=None, metavar="ARCH=PATH|DIR",
                           help="allkd: teacher weights as ARCH=PATH, or folders holding <dataset>_<arch>/best.pt, "
                                "<arch>.pth, <dataset>_<arch>.pth or <arch>_vanilla/ckpt_epoch_240.pth "
                                f"(default folder {DEFAULT_CKPT_DIR}); a teacher without weights is trained first")

    def teachers(self, args) -> Dict[str, str]:
        """Canonical name -> the spelling given (both are looked for in checkpoint folders)."""
        from registry.models import canonical_name

        names = args.allkd_teachers or list(KC_TEACHERS)
        where = "--allkd_teachers" if args.allkd_teachers else "allkd's default teachers (Distiller's list)"
        out: Dict[str, str] = {}
        for n in names:
            try:
                arch = canonical_name(n)
            except KeyError as e:
                raise KeyError(f"{where}: {e.args[0]}") from None
            if arch in out:
                raise ValueError(f"--allkd_teachers: {arch} is listed twice")
            out[arch] = n
        return out

    def checkpoints(self, args, teachers: Dict[str, str]) -> Dict[str, Optional[str]]:
        """Each teacher's weights file, or None where it has to be trained."""
        from registry.models import canonical_name

        explicit: Dict[str, str] = {}
        folders: List[str] = []
        for item in args.allkd_ckpts or []:
            name, sep, path = item.partition("=")
            if os.path.isdir(item) or not sep:
                if not os.path.isdir(item):
                    raise FileNotFoundError(f"--allkd_ckpts: {item!r} is neither ARCH=PATH nor a folder")
                folders.append(item)
                continue
            try:
                arch = canonical_name(name)
            except KeyError as e:
                raise KeyError(f"--allkd_ckpts {item}: {e.args[0]}") from None
            if arch not in teachers:
                raise ValueError(f"--allkd_ckpts {item}: {arch} is not among the teachers ({', '.join(teachers)})")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--allkd_ckpts {item}: no checkpoint at {path!r}")
            explicit[arch] = path
        if args.allkd_ckpts is None:
            folders = [DEFAULT_CKPT_DIR]
        return {arch: explicit.get(arch) or find_checkpoint(list(dict.fromkeys((given, arch))), args.dataset, folders)
                for arch, given in teachers.items()}

    def validate(self, ctx) -> None:
        from engine.checkpoint import load_weights

        for arch, path in self.checkpoints(ctx.args, self.teachers(ctx.args)).items():
            if path is not None:
                load_weights(ctx.model(arch), path)  # raises naming the keys when it does not fit

    def unused_flags(self, args) -> List[str]:
        unused = []
        if getattr(args, "teacher_ckpt", None) is not None:
            unused.append("--t_model_path (allkd reads each teacher's weights from --allkd_ckpts)")
        if {"--teacher", "--model_t"} & set(getattr(args, "given", ())):
            unused.append("--teacher (allkd sweeps --allkd_teachers)")
        return unused

    def run(self, ctx, save_dir: str) -> List[dict]:
        from engine.checkpoint import load_weights
        from engine.stages import run_stages
        from engine.utils import seed_everything
        from kd.train import distill_stages, result_row, teacher_stage

        a = ctx.args
        teachers = self.teachers(a)
        ckpts = self.checkpoints(a, teachers)
        rows = []
        for i, arch in enumerate(teachers, 1):
            folder = os.path.join(save_dir, arch)
            seed_everything(a.seed)
            teacher = ctx.model(arch)
            path, trained = ckpts[arch], ckpts[arch] is None
            if trained:
                t_folder = os.path.join(folder, "teacher")
                ctx.info(f"allkd {i}/{len(teachers)}: no checkpoint for teacher {arch}: training it "
                         f"({a.recipe} recipe) in {t_folder}")
                run_stages([teacher_stage(ctx, arch, t_folder, teacher)], resume=bool(a.resume), log=ctx.info)
                path = os.path.join(t_folder, "best.pt")
            load_weights(teacher, path)  # Distiller reloads the best epoch of a teacher it trained
            teacher = teacher.to(ctx.device)
            t_top1 = ctx.teacher_accuracy(teacher)
            ctx.info(f"allkd {i}/{len(teachers)}: teacher {arch} ({path}): test top1 {t_top1:.2f}")
            seed_everything(a.seed)  # every teacher gets the same student initialisation
            student = ctx.model(a.student)
            if a.s_init:
                load_weights(student, a.s_init)
            stages = distill_stages(ctx, "kd", student, teacher, folder, label=f"allkd {arch}->{a.student}")
            metrics = run_stages(stages, resume=bool(a.resume), log=ctx.info)[-1]
            row = result_row("allkd", a.student, arch, t_top1, metrics, folder)
            row.update(stage=f"teacher {arch}", teacher_ckpt=path, teacher_trained=trained)
            rows.append(row)
        best = mark_best(rows)
        if best is not None:
            top_teacher = max(rows, key=lambda r: r["teacher_top1"])
            ctx.info(f"allkd: best student {best['best_top1']:.2f} (teacher {best['teacher']}); "
                     f"best teacher {top_teacher['teacher']} {top_teacher['teacher_top1']:.2f}")
        return rows
