"""Load (issue 11, item 4): fast_meta over many short rounds with a capped pool keeps its memory
flat: the cap is honoured, and no tensor is kept alive per round."""
from __future__ import annotations

import gc
import warnings

import pytest
import torch

from datafree.api import build_trainer
from engine.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # some objects gc sees warn when inspected (deprecated torch aliases)
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.parametrize("method", ["fast_meta", "fast"])
def test_many_rounds_with_a_capped_pool_keep_memory_flat(tmp_path, method):
    from test_datafree_methods import TinyBNNet, make, tiny_cfg

    teacher = make().teacher
    cap, batch, rounds = 24, 6, 60
    trainer = build_trainer(teacher, TinyBNNet(width=4), method, tiny_cfg(warmup=0, batch_size=batch, g_steps=2,
                                                                          pool_capacity=cap),
                            TrainConfig(epochs=rounds, lr=0.01, schedule="constant", save_dir=str(tmp_path),
                                        progress=False, log_every=1000),
                            None, T=4.0, batch_size=8, kd_steps=1, ep_steps=1, device=torch.device("cpu"))
    trainer.fit(until_epoch=10)  # past the cap (4 rounds) and every lazy allocation
    pool = trainer.source.synth.pool
    assert len(pool) == cap
    tensors, rss = live_tensors(), rss_mb()
    trainer.fit()  # 50 more rounds, each with a KD step and a checkpoint
    assert trainer.start_epoch == rounds and len(pool) == cap
    assert live_tensors() == tensors  # nothing kept alive per round (history holds floats only)
    assert rss_mb() - rss < 20.0, f"resident memory grew by {rss_mb() - rss:.1f} MB over {rounds - 10} rounds"
