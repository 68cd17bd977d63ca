"""Helper of tests/test_distributed.py (not a test module): a few data-free epochs of each given
method, in one process or under torchrun, on a global synthesis batch split over the ranks.

    python tests/dist_synthesis.py OUT GLOBAL_BATCH METHOD[:IS_MAML][@EPOCHS] ...
    torchrun --nproc_per_node 2 tests/dist_synthesis.py OUT GLOBAL_BATCH METHOD[:IS_MAML][@EPOCHS] ...

Everything is the engine's own path (``datafree.api.build_trainer`` and ``Trainer.fit``) except
where the random start of each batch comes from: ``Synthesizer.noise`` and ``sample_classes`` draw
the *global* batch from a counter-seeded generator and return this rank's rows, so N ranks x B
and one process x N*B start every batch from the same numbers. Augmentation is off (no crop, no
flip), the teacher is in eval mode and the student has no BatchNorm, so every difference left
would be the engine's. Each rank writes ``OUT/<method>/rank<r>.pt``: the generator, its pool
shard and the student.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from datafree import SynthesisConfig  # noqa: E402
from datafree.api import build_trainer  # noqa: E402
from datafree.base import Synthesizer  # noqa: E402
from engine import distributed  # noqa: E402
from engine.logger import RunLogger  # noqa: E402
from engine.trainer import TrainConfig  # noqa: E402
from registry.models import get_model  # noqa: E402


def _global_rows(self: Synthesizer, draw, n: int):
    """This rank's ``n`` rows of a global draw of ``n * world_size`` (the k-th call: seed k)."""
    ctx = distributed.current()
    self._calls = getattr(self, "_calls", 0) + 1
    g = torch.Generator().manual_seed(10_000 + self._calls)
    full = draw(n * ctx.world_size, g)
    return full[ctx.rank * n:(ctx.rank + 1) * n].to(self.device)


def noise(self: Synthesizer, *shape: int) -> torch.Tensor:
    return _global_rows(self, lambda m, g: torch.randn((m,) + tuple(shape[1:]), generator=g), shape[0])


def sample_classes(self: Synthesizer, n: int) -> torch.Tensor:
    return _global_rows(self, lambda m, g: torch.randint(self.cfg.num_classes, (m,), generator=g), n)


def teacher_model() -> torch.nn.Module:
    """A seeded ResNet-8 whose BN layers hold non-trivial running statistics (the BN loss's targets)."""
    torch.manual_seed(0)
    t = get_model("resnet8", num_classes=10, in_chans=1)
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return t.eval()


def run(out: str, global_batch: int, spec: str) -> None:
    spec, _, epochs = spec.partition("@")
    method, _, maml = spec.partition(":")
    ctx = distributed.current()
    batch = global_batch // ctx.world_size
    torch.manual_seed(1)
    student = get_model("lenet5_half", num_classes=10, in_chans=1)  # no BatchNorm
    extra = dict(act=0.1, balance=1.0) if method == "dafl" else {}
    syn = SynthesisConfig(num_classes=10, img_size=32, nc=1, mean=(0.5,), std=(0.5,), batch_size=batch, g_steps=3,
                          lr_g=2e-3, lr_z=0.01, nz=32, ngf=16, bn=1.0, oh=1.0, adv=0.5, bn_mmt=0.9, warmup=0,
                          pad=0, flip=False, pool_capacity=batch, pool_storage="fp16",
                          is_maml=int(maml or 1), **extra)
    folder = os.path.join(out, spec.replace(":", "_maml"))
    train = TrainConfig(epochs=int(epochs or 3), lr=0.05, schedule="constant", weight_decay=5e-4, amp="off", save_dir=folder,
                        progress=False, log_every=1)
    logger = RunLogger(folder, tensorboard=False, console=False)
    trainer = build_trainer(teacher_model(), student, method, syn, train, None, T=4.0, batch_size=batch, kd_steps=2,
                            ep_steps=2, device=torch.device("cpu"), logger=logger)
    trainer.fit()
    synth = trainer.source.synth
    head = getattr(synth, "head", None)  # cmi's projection head
    generator = getattr(synth, "generator", None)  # deepinv learns pixels, no generator
    torch.save({"generator": generator.state_dict() if generator is not None else {}, "student": trainer.objective.student.state_dict(),
                "pool": synth.pool.images() if synth.uses_pool else None,
                "head": head.state_dict() if head is not None else None},
               os.path.join(folder, f"rank{ctx.rank}.pt"))


def main() -> None:
    out, global_batch, specs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    Synthesizer.noise, Synthesizer.sample_classes = noise, sample_classes
    distributed.setup()
    torch.set_num_threads(1)
    # float64: Adam turns float32 round-off in near-zero gradients into visible steps (permuting
    # the batch of one float32 process moves a weight by 1e-5); in float64 the comparison is tight
    torch.set_default_dtype(torch.float64)
    try:
        for spec in specs:
            run(out, global_batch, spec)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
