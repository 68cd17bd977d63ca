"""Runs made of several trainer stages, each resumable on its own.

A two-stage KD method (an initialisation stage, then distillation), a teacher-assistant chain
(teacher -> assistant -> student) or a job that first trains its own teacher is a list of
:class:`Stage` s. Each stage writes its own ``last.pt``/``best.pt``, ``log.txt``, TensorBoard
events and ``metrics.json`` under its own folder, so it is logged as its own stage. With
``resume``, a stage whose ``last.pt`` already covers all its (current) epochs is not trained again: its
weights (student and extra modules) are restored from that checkpoint and the next stage
starts; the first unfinished stage continues from its ``last.pt``. Without ``resume`` every
stage trains from the start.

Stages are built lazily (``build`` is called when the stage is reached), so a later stage
can use models trained by an earlier one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

from engine.checkpoint import load_resume


@dataclass
class Stage:
    """One trainer run: ``build()`` returns a ready :class:`engine.trainer.Trainer` whose
    ``cfg.save_dir`` is this stage's folder."""

    name: str
    build: Callable[[], "object"]
    after: Optional[Callable[[dict], None]] = None  # called with the stage's metrics when it ends


def stage_finished(save_dir: str, epochs: int) -> bool:
    """Whether ``save_dir/last.pt`` already holds epoch ``epochs`` (the stage's last)."""
    path = os.path.join(save_dir, "last.pt")
    if not os.path.isfile(path):
        return False
    return load_resume(path)[0]["epoch"] + 1 >= epochs


def restore_final(trainer, path: str) -> None:
    """Load the weights of a finished stage (student and extra modules) into ``trainer``'s
    objective, without touching its optimiser: the state the next stage starts from."""
    ckpt, _ = load_resume(path, map_location=trainer.device, log=trainer.logger.info)
    trainer.objective.student.load_state_dict(ckpt["model"])
    modules = trainer.objective.trainable_modules()
    for k, sd in ckpt.get("modules", {}).items():
        if k in modules:
            modules[k].load_state_dict(sd)
    trainer.history = list(ckpt["history"])
    trainer.best_top1, trainer.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
    trainer.time_total = ckpt.get("time_total", 0.0)
    trainer.start_epoch = ckpt["epoch"] + 1


def run_stages(stages: List[Stage], resume: bool, log: Callable[[str], None] = print) -> List[dict]:
    """Run ``stages`` in order; returns each stage's metrics."""
    results = []
    for i, stage in enumerate(stages, 1):
        trainer = stage.build()
        folder = trainer.cfg.save_dir
        last = os.path.join(folder, "last.pt")
        prefix = f"stage {i}/{len(stages)} ({stage.name})"
        if resume and stage_finished(folder, trainer.cfg.epochs):
            restore_final(trainer, last)
            log(f"{prefix}: already finished in {folder}; its weights are restored")
            metrics = trainer._metrics(status="finished")
        else:
            if resume and os.path.isfile(last):
                trainer.resume(last)
            log(f"{prefix}: {trainer.cfg.epochs} epochs in {folder}")
            metrics = trainer.fit()
        metrics["stage"] = stage.name
        if stage.after is not None:
            stage.after(metrics)
        results.append(metrics)
    return results
