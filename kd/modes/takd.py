"""TAKD: teacher -> teacher assistant -> student, one command (Mirzadeh et al., "Improved
Knowledge Distillation via Teacher Assistant", AAAI 2020).

Stage 1 distils the teacher into the assistant (``--ta_model``, default resnet20 as
Distiller's ``test_takd`` hard-codes), stage 2 the assistant into the student, both with
Hinton KD at the run's weights and temperature (Distiller: lambda 0.5, T 5, i.e. ``-r 0.5
-a 0.5 --kd_T 5`` under ``--recipe distiller``). ``--ta_chain a b ...`` gives a longer chain
of assistants (KD_Lib's form), each distilled from the previous one; KD_Lib's MSE-of-log-
softmax loss is not copied (it is not KL). Each link is its own stage, resumable.
"""
from __future__ import annotations

import os
from typing import List

from engine.stages import run_stages
from kd.modes import Mode, register_mode


@register_mode("takd")
class TAKD(Mode):
    flags = ("ta_model", "ta_chain", "ta_ckpt")

    def add_arguments(self, group) -> None:
        group.add_argument("--ta_model", default=None, help="takd: the teacher assistant (default resnet20)")
        group.add_argument("--ta_chain", nargs="+", default=None, help="takd: several assistants, teacher side first")
        group.add_argument("--ta_ckpt", default=None, help="takd: use these assistant weights instead of training it")

    def chain(self, args) -> List[str]:
        from registry.models import canonical_name

        names = args.ta_chain or [args.ta_model or "resnet20"]
        return [canonical_name(n) for n in names]

    def validate(self, ctx) -> None:
        chain = self.chain(ctx.args)
        if ctx.args.ta_ckpt and len(chain) != 1:
            raise ValueError("--ta_ckpt: give one assistant (--ta_model), not a chain")
        if ctx.args.ta_ckpt and not os.path.isfile(ctx.args.ta_ckpt):
            raise FileNotFoundError(f"--ta_ckpt: no checkpoint at {ctx.args.ta_ckpt!r}")

    def run(self, ctx, save_dir: str) -> List[dict]:
        from engine.checkpoint import load_weights
        from kd.train import distill_stages, result_row

        a = ctx.args
        rows = []
        teacher, t_name = ctx.teacher, a.teacher
        for i, ta_name in enumerate(self.chain(a), 1):
            ta = ctx.model(ta_name)
            folder = os.path.join(save_dir, f"assistant{i}_{ta_name}")
            if a.ta_ckpt:
                load_weights(ta, a.ta_ckpt)
                ta = ta.to(ctx.device)
                ctx.info(f"takd: assistant {ta_name} loaded from {a.ta_ckpt}")
                rows.append({"method": "takd", "stage": f"assistant {ta_name}", "student": ta_name, "teacher": t_name,
                             "last_top1": ctx.teacher_accuracy(ta), "best_top1": None, "save_dir": a.ta_ckpt})
            else:
                m = run_stages(distill_stages(ctx, "kd", ta, teacher, folder, label=f"takd {t_name}->{ta_name}"),
                               resume=bool(a.resume), log=ctx.info)[-1]
                row = result_row("takd", ta_name, t_name, None, m, folder)
                row["stage"] = f"assistant {ta_name}"
                rows.append(row)
            teacher, t_name = ta, ta_name
        student = ctx.model(a.student)
        m = run_stages(distill_stages(ctx, "kd", student, teacher, save_dir, label=f"takd {t_name}->{a.student}"),
                       resume=bool(a.resume), log=ctx.info)[-1]
        row = result_row("takd", a.student, a.teacher, ctx.teacher_top1, m, save_dir)
        row["stage"] = f"student (via {' -> '.join(self.chain(a))})"
        rows.append(row)
        return rows
