"""The data-free batch source: synthesize-then-train rounds for the shared trainer.

Per epoch, ``ep_steps // kd_steps`` rounds; each round runs ``synthesizer.synthesize(epoch)``
and then, from ``warmup`` on, yields ``kd_steps`` unlabelled batches from
``synthesizer.sample(batch_size)`` (Fast-Datafree ``datafree_kd.py``).
During warm-up the pool grows and nothing is yielded, so the trainer takes no step.
Synthesis time is measured with device synchronisation and reported per epoch; for the
generative methods it includes drawing the fresh batches that feed the KD steps (as the
reference counts it).
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterable, Iterator, Optional

import torch

from engine import distributed
from engine.trainer import SourceDiverged


class DataFreeSource:
    def __init__(self, synthesizer, batch_size: int, kd_steps: int, ep_steps: int, warmup: int,
                 logger=None, image_dir: Optional[str] = None):
        if kd_steps <= 0 or ep_steps < kd_steps:
            raise ValueError(f"need 0 < kd_steps <= ep_steps, got kd_steps={kd_steps}, ep_steps={ep_steps}")
        self.synth, self.batch_size = synthesizer, batch_size
        self.kd_steps, self.ep_steps, self.warmup = kd_steps, ep_steps, warmup
        self.rounds = ep_steps // kd_steps
        synthesizer.rounds_per_epoch = self.rounds
        self.logger, self.image_dir = logger, image_dir
        self.epoch = 0
        self.progress = False  # a bar over the synthesis rounds of warm-up epochs
        self._stats: Dict[str, float] = {}
        self.syn_time_total = 0.0
        self._position: Optional[dict] = None  # at each KD step of an epoch: its round, step and sums so far
        self._resume: Optional[dict] = None  # a restored mid-epoch position

    resumable_mid_epoch = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rounds * self.kd_steps if self.epoch >= self.warmup else 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        sums: Dict[str, float] = {}
        rounds: Iterable[int] = range(self.rounds)
        if self.progress and self.epoch < self.warmup:  # warm-up epochs have no KD steps for the trainer's bar
            from tqdm import tqdm

            rounds = tqdm(rounds, desc=f"warm-up epoch {self.epoch + 1}/{self.warmup}", unit="round", leave=False,
                          dynamic_ncols=True)
        resume, self._resume = self._resume, None
        if resume is not None:  # continue an epoch a checkpoint was taken in: its round is synthesized already
            sums = dict(resume["sums"])
        for r in rounds:
            if resume is not None and r < resume["round"]:
                continue
            self.synth.round_in_epoch = r
            continuing = resume is not None and r == resume["round"]
            if not continuing:
                stats = self.synth.synthesize(self.epoch)
                self._check_finite(stats, r)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
            if self.epoch >= self.warmup:
                for k in range(resume["step"] if continuing else 0, self.kd_steps):
                    self._position = {"round": r, "step": k + 1, "sums": dict(sums)}
                    yield self.synth.sample(self.batch_size)
        self._position = None
        sums["syn_time"] = sums.get("syn_time", 0.0) + self.synth.pop_sample_time()
        sums = self._over_ranks(sums)
        self.syn_time_total += sums["syn_time"]
        self._stats = {k: (v if k in ("syn_time", "syn_images") else v / max(self.rounds, 1)) for k, v in sums.items()}
        self._stats["syn_time_total"] = self.syn_time_total
        self._stats["source_time"] = sums.get("syn_time", 0.0)
        self._save_grid()

    def _over_ranks(self, sums: Dict[str, float]) -> Dict[str, float]:
        """The epoch's synthesis figures for the log: under torchrun, the ranks' means (each
        rank's losses are those of its share of the batch), and ``syn_images`` summed over the
        ranks' pool shards."""
        sums = dict(sums)
        sums["syn_images"] = float(len(self.synth.pool)) if self.synth.uses_pool else 0.0
        ctx = distributed.current()
        if not ctx.enabled:
            return sums
        names = sorted(sums)
        total = distributed.all_reduce_sum(torch.tensor([sums[k] for k in names], dtype=torch.float64)).tolist()
        return {k: v if k == "syn_images" else v / ctx.world_size for k, v in zip(names, total)}

    def _check_finite(self, stats: Dict[str, float], r: int) -> None:
        """A synthesis round whose loss or learned tensors (generator, latents) are no longer
        finite stops the run (:class:`engine.trainer.SourceDiverged`) before its images reach a
        KD step or a checkpoint: the last good checkpoint stays the one on disk."""
        bad = [k for k, v in stats.items() if k.startswith("syn_") and isinstance(v, float) and not math.isfinite(v)]
        finite = not bad
        if finite:
            tensors = [t for t in self.synth.learned_tensors() if t.is_floating_point()]
            finite = not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
        if distributed.current().enabled:  # the ranks stop together, or none does
            finite = distributed.all_reduce_sum(torch.tensor([0.0 if finite else 1.0])).item() == 0
        if finite:
            return
        what = (f"synthesis {', '.join(f'{k} {stats[k]}' for k in bad)}" if bad
                else "the synthesizer's generator or latents are no longer finite"
                + (f" (on one of the {distributed.current().world_size} ranks)" if distributed.current().enabled else ""))
        raise SourceDiverged(f"{what} ({type(self.synth).__name__} round {r + 1} of the epoch)",
                             "Try lower synthesis loss weights (--bn, --oh, --adv) or a lower --lr_g.")

    def _save_grid(self) -> None:
        images = self.synth.last_images
        if self.logger is None or images is None or not distributed.is_main():  # rank 0's shard is shown
            return
        shown = images[:64]
        epoch = self.epoch + 1  # 1-based, as the log counts
        path = os.path.join(self.image_dir, f"epoch{epoch:04d}.png") if self.image_dir else None
        if path:
            os.makedirs(self.image_dir, exist_ok=True)
        self.logger.image_grid("synthetic", shown, epoch, path, nrow=8, labels=self.synth.predict(shown))

    def epoch_stats(self) -> Dict[str, float]:
        return dict(self._stats)

    def state_dict(self) -> dict:
        """The synthesizer's state and where the epoch is. Under torchrun (called on every rank)
        each rank's own part (``RANK_STATE``: its pool shard, latents, bank; its position's sums)
        is gathered into ``ranks``, and the shared part is rank 0's; each rank has written its
        pool shard's new images under its own folder."""
        synth = self.synth.state_dict()
        state = {"synthesizer": synth, "syn_time_total": self.syn_time_total, "position": self._position}
        ctx = distributed.current()
        if ctx.enabled:
            own = {k: synth.pop(k) for k in sorted(self.synth.RANK_STATE) if k in synth}
            state["ranks"] = distributed.gather_objects({"synthesizer": own, "position": self._position})
        return state

    def load_state_dict(self, state: dict) -> None:
        synth, position = dict(state["synthesizer"]), state.get("position")
        ranks, ctx = state.get("ranks"), distributed.current()
        if (len(ranks) if ranks is not None else 1) != ctx.world_size:
            raise ValueError(f"the checkpoint holds the synthesis state (pool shards) of {len(ranks or [None])} "
                             f"rank(s), this run has {ctx.world_size}: resume with as many processes")
        if ranks is not None:
            synth.update(ranks[ctx.rank]["synthesizer"])
            position = ranks[ctx.rank]["position"]
        self.synth.load_state_dict(synth)
        self.syn_time_total = state["syn_time_total"]
        self._resume = position
