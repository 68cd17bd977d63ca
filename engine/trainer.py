"""One trainer for every job: teacher training, data-driven KD and data-free KD.

The trainer pulls batches from a *batch source* (any iterable: a :class:`engine.data.TensorLoader`,
a PIL ``DataLoader``, or a synthesizer that yields unlabelled batches), hands each to an
:class:`engine.objective.Objective`, sums the named losses it returns and steps an SGD optimiser.
After every epoch it evaluates the student on the real test set, logs, and writes ``last.pt``
(and ``best.pt``) atomically with everything needed to continue exactly.

Optional hooks a batch source may implement: ``set_epoch(epoch)`` (called before each epoch),
``epoch_stats() -> dict`` (merged into the epoch's log, e.g. synthesis time; a ``source_time``
entry is taken out of the training time when throughput is computed), and
``state_dict()`` / ``load_state_dict()`` (saved in checkpoints, e.g. an image pool).
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from engine import distributed
from engine.checkpoint import load_resume, save_checkpoint
from engine.logger import RunLogger
from engine.objective import Objective
from engine.utils import get_rng_state, library_versions, optimizer_impl, set_rng_state, synchronize


class DivergenceError(RuntimeError):
    """Raised when the loss or the weights stop being finite."""


class SourceDiverged(DivergenceError):
    """Raised by a batch source whose own training stopped being finite (a synthesizer's loss
    or generator); the trainer stops the run as for the student's divergence."""

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.hint = hint


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run at a step boundary, after its checkpoint was written;
    ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGINT and SIGTERM only set
    :attr:`received`; the trainer looks at it at every step boundary. A second signal stops at
    once, as without the handler."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second one: give up waiting for the step boundary
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False


@dataclass
class TrainConfig:
    """Optimiser, schedule and run settings shared by every job."""

    epochs: int = 240
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: Sequence[int] = (150, 180, 210)
    gamma: float = 0.1
    eta_min: float = 0.0
    sched_start_epoch: int = 0  # the scheduler steps from this epoch on (data-free warm-up)
    amp: str = "auto"  # training steps: auto (bf16 on CUDA, off elsewhere) | bf16 (also on CPU) | fp16 (CUDA) | off
    channels_last: Optional[bool] = None  # None: on for CUDA
    grad_clip: Optional[float] = None
    opt_impl: str = "auto"  # SGD kernel: auto (fused on CPU/CUDA) | fused | foreach | loop
    compile: bool = False  # torch.compile the objective's forward (teacher + student) for the steps
    log_every: int = 50  # steps between host syncs (loss check, progress bar, per-step scalars)
    save_dir: str = "run/default"
    save_best: bool = True
    progress: bool = True


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def _batch_size(batch: Any) -> int:
    while not isinstance(batch, torch.Tensor):
        batch = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
    return batch.shape[0]


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> Dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    n = 0
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for x, y in loader:
        x, y = _to_device((x, y), device, channels_last)
        with ctx:
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(y[:, None])
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += y.shape[0]
    model.train(was_training)
    counts = distributed.all_reduce_sum(torch.stack([correct1.double(), correct5.double(), loss_sum.double(),
                                                     torch.tensor(float(n), device=device, dtype=torch.double)]))
    c1, c5, loss, n = counts.tolist()  # summed over the ranks' shards of the test set
    n = max(n, 1)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "test_loss": loss / n}


@torch.no_grad()
def evaluate_heads(heads, loader: Iterable, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                   channels_last: bool = False) -> Dict[str, float]:
    """Evaluate several classifiers in one pass: ``heads(x)`` returns ``{name: logits}`` (the
    first entry is the model whose figures are reported as ``top1``/``top5``/``test_loss``;
    every entry also gets ``top1_<name>``). Used for DML peers, BYOT branches, ensembles."""
    counts: Dict[str, List[torch.Tensor]] = {}
    loss_sum = torch.zeros((), device=device)
    n, first = 0, None
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for x, y in loader:
        x, y = _to_device((x, y), device, channels_last)
        with ctx:
            outs = heads(x)
        for i, (name, logits) in enumerate(outs.items()):
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(y[:, None])
            c = counts.setdefault(name, [torch.zeros((), device=device, dtype=torch.long),
                                         torch.zeros((), device=device, dtype=torch.long)])
            c[0] += hits[:, 0].sum()
            c[1] += hits.any(dim=1).sum()
            if i == 0:
                first = name
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
        n += y.shape[0]
    names = list(counts)
    flat = [t.double() for k in names for t in counts[k]] + [loss_sum.double(),
                                                             torch.tensor(float(n), device=device, dtype=torch.double)]
    summed = distributed.all_reduce_sum(torch.stack(flat)).tolist() if flat else [0.0]
    n = max(summed[-1], 1)
    hits = {k: (summed[2 * i], summed[2 * i + 1]) for i, k in enumerate(names)}
    out = {f"top1_{k}": 100.0 * h[0] / n for k, h in hits.items()}
    if first is not None:
        out.update(top1=out[f"top1_{first}"], top5=100.0 * hits[first][1] / n, test_loss=summed[-2] / n)
    return out


class Trainer:
    """Train ``objective`` on batches from ``train_source``; evaluate on ``test_loader``.

    ``args`` (the command line as a dict) is stored in checkpoints and ``metrics.json``.
    """

    def __init__(self, objective: Objective, train_source: Iterable, test_loader: Optional[Iterable],
                 config: TrainConfig, device: torch.device, logger: Optional[RunLogger] = None,
                 args: Optional[dict] = None):
        self.cfg = config
        self.device = device
        self.objective = objective.to(device).freeze()
        self.source = train_source
        self.test_loader = test_loader
        self.args = dict(args or {})
        self.logger = logger or RunLogger(config.save_dir, tensorboard=False, console=False)
        self.channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
        if self.channels_last:
            self.objective.to(memory_format=torch.channels_last)
        self.amp_dtype = self._amp_dtype(config.amp, device)
        self.precision = {"train_steps": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32"),
                          "evaluation": "fp32"}
        self._precision_logged = False
        self.params: List[nn.Parameter] = list(self.objective.trainable_parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=config.nesterov,
                                         **optimizer_impl(config.opt_impl, device))
        # the training step's forward; compiled on request (checkpoints still hold the plain modules)
        self.step_forward = torch.compile(self.objective) if config.compile else self.objective
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.global_step = 0
        self.history: List[Dict[str, float]] = []
        self.best_top1, self.best_epoch = -1.0, -1
        self.time_total = 0.0  # summed over (resumed) runs
        self.stop_signals: Optional[StopSignals] = None  # set while fit() runs
        self.dist = distributed.current()
        if self.dist.enabled:  # every rank starts from rank 0's weights and draws its own augmentations
            distributed.broadcast_state(self.objective.trainable_modules().values())
            torch.manual_seed(distributed.rank_seed(torch.initial_seed()))
        self._in_epoch: Optional[dict] = None  # a restored mid-epoch position (steps done, their sums)

    # ----------------------------------------------------------------- set-up
    @staticmethod
    def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
        if amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off; got {amp!r}")
        if amp == "off":
            return None
        if device.type != "cuda":  # CPU: bf16 autocast only when asked for; fp16 needs CUDA's scaler
            return torch.bfloat16 if amp == "bf16" and device.type == "cpu" else None
        if amp == "fp16":
            return torch.float16
        if amp == "auto" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16

    def _build_scheduler(self):
        cfg = self.cfg
        span = max(cfg.epochs - cfg.sched_start_epoch, 1)
        if cfg.schedule == "multistep":
            return torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(cfg.milestones), cfg.gamma)
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, span, eta_min=cfg.eta_min)
        if cfg.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        raise ValueError(f"schedule must be multistep, cosine or constant; got {cfg.schedule!r}")

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int, in_epoch: Optional[dict] = None) -> dict:
        """Everything needed to continue: ``epoch`` is the last finished one; ``in_epoch`` (a
        checkpoint written between two steps) says how far the next one got."""
        extras = {k: m.state_dict() for k, m in self.objective.trainable_modules().items() if k != "student"}
        return {
            "in_epoch": in_epoch,
            "model": self.objective.student.state_dict(),
            "modules": extras,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "rng": get_rng_state(),
            "rng_ranks": distributed.gather_objects(get_rng_state()) if self.dist.enabled else None,
            "source": self.source.state_dict() if hasattr(self.source, "state_dict") else None,
            "args": self.args,
            "config": asdict(self.cfg),
            "history": self.history,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "time_total": self.time_total,
        }

    def resume(self, path: str) -> None:
        """Continue from a ``last.pt``: weights, optimiser, schedule, scaler, RNG, source state."""
        ckpt, path = load_resume(path, map_location=self.device, log=self.logger.info)
        self.objective.student.load_state_dict(ckpt["model"])
        modules = self.objective.trainable_modules()
        for k, sd in ckpt.get("modules", {}).items():
            modules[k].load_state_dict(sd)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("source") is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(ckpt["source"])
        ranks = ckpt.get("rng_ranks")
        if self.dist.enabled and ranks is not None and len(ranks) == self.dist.world_size:
            set_rng_state(ranks[self.dist.rank])  # every rank continues its own random stream
        else:
            set_rng_state(ckpt["rng"])
            if self.dist.enabled:
                self.logger.info(f"the checkpoint holds the RNG state of {len(ranks) if ranks else 1} rank(s), not "
                                 f"{self.dist.world_size}: every rank continues from rank 0's")
        self.start_epoch = ckpt["epoch"] + 1
        self.global_step = ckpt["global_step"]
        self.history = list(ckpt["history"])
        self.best_top1, self.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        self.time_total = ckpt.get("time_total", 0.0)
        self._in_epoch = ckpt.get("in_epoch")
        where = f" step {self._in_epoch['steps']}" if self._in_epoch else ""
        self.logger.info(f"resumed from {path} at epoch {self.start_epoch + 1}{where}")
        saved_epochs = (ckpt.get("config") or {}).get("epochs")
        if saved_epochs is not None and saved_epochs != self.cfg.epochs:
            self._replan(saved_epochs)

    def _replan(self, saved_epochs: int) -> None:
        """A resume with another ``--epochs``: the cosine schedule is re-planned over the new
        length from where the run is (the learning rate continues from the new curve's value at
        this epoch, instead of the old curve's), and the log says so. Step schedules keep their
        milestones."""
        cfg, sched = self.cfg, self.scheduler
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = max(cfg.epochs - cfg.sched_start_epoch, 1)
            t = min(sched.last_epoch, sched.T_max)
            lrs = [cfg.eta_min + (base - cfg.eta_min) * (1 + math.cos(math.pi * t / sched.T_max)) / 2
                   for base in sched.base_lrs]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            sched._last_lr = lrs
            self.logger.info(f"--epochs {cfg.epochs} (checkpoint: {saved_epochs}): the cosine schedule is re-planned "
                             f"over {sched.T_max} epochs; lr now {lrs[0]:.4g}")
        else:
            self.logger.info(f"--epochs {cfg.epochs} (checkpoint: {saved_epochs}): training continues to epoch "
                             f"{cfg.epochs} with the same {cfg.schedule} schedule")

    @property
    def last_path(self) -> str:
        return os.path.join(self.cfg.save_dir, "last.pt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.cfg.save_dir, "best.pt")

    # --------------------------------------------------------------- training
    def _diverged(self, what: str, epoch: int, step: int, hint: str = "Try a lower --lr or --amp off.") -> DivergenceError:
        kept = self.last_path if os.path.exists(self.last_path) else "none yet (diverged in the first epoch)"
        msg = (f"training diverged: {what} at epoch {epoch + 1} step {step}; stopping. "
               f"Last good checkpoint: {kept}. {hint}")
        self.logger.info(msg)
        self.logger.write_json("metrics.json", self._metrics(status="diverged", message=msg))
        return DivergenceError(msg)

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        obj, opt, cfg = self.objective, self.optimizer, self.cfg
        obj.train()
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
        weight = obj.loss_weight
        weighted = type(obj).loss_weight is not Objective.loss_weight
        sums: Dict[str, torch.Tensor] = {}
        window = torch.zeros((), device=self.device)
        norms: List[float] = []
        steps = samples = 0
        resumed, self._in_epoch = self._in_epoch, None
        samples_before = resumed["samples"] if resumed is not None else 0  # not timed in this process
        if resumed is not None:  # the steps this epoch had taken before the run was stopped
            steps, samples, norms = resumed["steps"], resumed["samples"], list(resumed["norms"])
            sums = {k: torch.tensor(v, device=self.device) for k, v in resumed["sums"].items()}
        amp_ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        total = len(self.source) if hasattr(self.source, "__len__") else None
        bar = tqdm(total=total, initial=steps if total else 0, desc=f"epoch {epoch + 1}", leave=False,
                   dynamic_ncols=True, disable=None if cfg.progress else True)
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            batches = iter(self.source)
        except SourceDiverged as e:
            bar.close()
            raise self._diverged(str(e), epoch, 0, e.hint) from None
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except SourceDiverged as e:
                bar.close()
                raise self._diverged(str(e), epoch, steps, e.hint) from None
            batch = _to_device(batch, self.device, self.channels_last)
            try:
                with amp_ctx:
                    losses = self.step_forward(batch)
            except torch.linalg.LinAlgError as e:  # e.g. an SVD of features that are no longer finite
                bar.close()
                if not self._weights_finite():
                    raise self._diverged("weights are no longer finite", epoch, steps) from e
                raise
            loss = sum(v * weight(k) for k, v in losses.items()) if weighted else sum(losses.values())
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            distributed.average_gradients(self.params)  # no-op in a single process
            log_now = (steps + 1) % cfg.log_every == 0
            if cfg.grad_clip or log_now:
                self.scaler.unscale_(opt)
                norm = (torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip
                        else grad_norm(self.params))
            self.scaler.step(opt)
            self.scaler.update()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            window += loss.detach().float()
            steps += 1
            samples += _batch_size(batch)
            self.global_step += 1
            bar.update(1)
            if log_now:
                w = distributed.all_reduce_sum(window).item() / cfg.log_every / self.dist.world_size
                if not math.isfinite(w):
                    bar.close()
                    raise self._diverged(f"loss is {w}", epoch, steps)
                norms.append(norm.item())
                bar.set_postfix(loss=f"{w:.4f}", lr=f"{opt.param_groups[0]['lr']:.4g}")
                self.logger.scalars({"train_step/loss": w, "train_step/grad_norm": norms[-1]}, self.global_step)
                window.zero_()
            if self._stop_now(log_now):
                bar.close()
                self._stop_mid_epoch(epoch, steps, samples, sums, norms, time.perf_counter() - t0)
        synchronize(self.device)
        elapsed = time.perf_counter() - t0
        bar.close()
        if self.dist.enabled and sums:  # the epoch's losses as the mean over every rank's steps
            names = sorted(sums)
            total = distributed.all_reduce_sum(torch.stack([sums[k] for k in names])) / self.dist.world_size
            sums = dict(zip(names, total))
        stats = {f"loss_{k}": (v / steps).item() for k, v in sums.items()}
        if steps:
            stats["loss"] = sum(stats[f"loss_{k}"] * weight(k) for k in sums)
            if not math.isfinite(stats["loss"]):
                raise self._diverged(f"loss is {stats['loss']}", epoch, steps)
        if norms:
            stats["grad_norm"] = sum(norms) / len(norms)
        if self.dist.enabled:
            samples = int(distributed.all_reduce_sum(torch.tensor(float(samples))).item())
        stats.update(steps=steps, samples=samples, train_time=elapsed,
                     throughput=(samples - samples_before) / elapsed if elapsed > 0 else 0.0,
                     lr=opt.param_groups[0]["lr"])
        return stats

    def _stop_now(self, log_step: bool) -> bool:
        """Whether a stop signal has arrived. Under torchrun the ranks decide together, at the
        steps that log (so every rank stops at the same step, and no step waits on a collective
        of its own)."""
        received = self.stop_signals is not None and self.stop_signals.received is not None
        if not self.dist.enabled:
            return received
        if not log_step:
            return False
        flag = distributed.all_reduce_sum(torch.tensor([1.0 if received else 0.0]))
        if flag.item() > 0 and not received:
            self.stop_signals.received = signal.SIGTERM  # another rank's signal
        return flag.item() > 0

    def _stop_mid_epoch(self, epoch: int, steps: int, samples: int, sums: Dict[str, torch.Tensor], norms: List[float],
                        elapsed: float) -> None:
        """A stop signal arrived: write ``last.pt`` as of this step boundary (when the batch
        source can continue mid-epoch; otherwise the last epoch's checkpoint stays and the
        epoch is redone), then raise :class:`Interrupted`."""
        signum = self.stop_signals.received
        name = signal.Signals(signum).name
        self.time_total += elapsed
        if getattr(self.source, "resumable_mid_epoch", False):
            in_epoch = {"epoch": epoch, "steps": steps, "samples": samples, "norms": list(norms),
                        "sums": {k: float(v) for k, v in sums.items()}}
            if not self._weights_finite():
                raise self._diverged("weights are no longer finite", epoch, steps)
            self._save(self.state_dict(epoch - 1, in_epoch), best=False)
            where = f"{self.last_path} (epoch {epoch + 1}, step {steps})"
        else:
            kept = self.last_path if os.path.exists(self.last_path) else None
            where = (f"{kept} (epoch {epoch}; this batch source cannot continue mid-epoch, so --resume redoes "
                     f"epoch {epoch + 1})" if kept else "none (stopped in the first epoch)")
        self._interrupted(f"stopped by {name} at epoch {epoch + 1} step {steps}; checkpoint: {where}; "
                          "--resume continues", signum)

    def _stop_between_epochs(self, epoch: int) -> None:
        """A stop signal arrived after an epoch's last step (or in a warm-up epoch, which has no
        steps): that epoch's ``last.pt`` is the checkpoint."""
        signum = self.stop_signals.received
        self._interrupted(f"stopped by {signal.Signals(signum).name} after epoch {epoch}; checkpoint: "
                          f"{self.last_path} (epoch {epoch}); --resume continues", signum)

    def _interrupted(self, msg: str, signum: int) -> None:
        """Log the stop, mark ``metrics.json`` interrupted and raise :class:`Interrupted`."""
        self.logger.info(msg)
        self.logger.write_json("metrics.json", self._metrics(status="interrupted", message=msg))
        self.logger.flush()
        raise Interrupted(msg, signum)

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)

    def _metrics(self, **extra) -> dict:
        last = self.history[-1] if self.history else {}
        return {
            "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "last_top1": last.get("top1"), "last_top5": last.get("top5"), "last_epoch": last.get("epoch"),
            "epochs": len(self.history), "time_total": self.time_total,
            "time_train": sum(h.get("train_time", 0.0) for h in self.history),
            "time_eval": sum(h.get("eval_time", 0.0) for h in self.history),
            "precision": self.precision, "args": self.args, "config": asdict(self.cfg),
            "versions": library_versions(),
            "history": self.history, **extra,
        }

    def run_evaluation(self) -> Dict[str, float]:
        # rank 0's BatchNorm running statistics on every rank, as DDP's broadcast_buffers does
        distributed.broadcast_state(self.objective.trainable_modules().values(), buffers_only=True)
        heads = getattr(self.objective, "eval_heads", None)
        if heads is None:
            # the test set is always evaluated in fp32, whatever the training steps' precision
            return evaluate(self.objective.student, self.test_loader, self.device, None, self.channels_last)
        was = self.objective.training
        self.objective.eval()
        try:
            return evaluate_heads(heads, self.test_loader, self.device, None, self.channels_last)
        finally:
            self.objective.train(was)

    def fit(self, until_epoch: Optional[int] = None) -> dict:
        """Train from ``start_epoch`` to ``cfg.epochs`` (or stop before ``until_epoch``, as an
        interruption would). Returns the metrics also written to ``metrics.json``."""
        cfg = self.cfg
        stop = cfg.epochs if until_epoch is None else min(until_epoch, cfg.epochs)
        if not self._precision_logged:
            self.logger.info(f"precision: training steps {self.precision['train_steps']} (--amp {cfg.amp}), "
                             f"test-set evaluation fp32")
            self._precision_logged = True
        with StopSignals() as self.stop_signals:
            try:
                self._fit_epochs(stop)
            finally:
                self.stop_signals = None
        metrics = self._metrics(status="finished" if self.start_epoch >= cfg.epochs else "stopped")
        self.logger.write_json("metrics.json", metrics)
        self.logger.flush()
        return metrics

    def _fit_epochs(self, stop: int) -> None:
        cfg = self.cfg
        for epoch in range(self.start_epoch, stop):
            if self.stop_signals.received is not None:  # arrived after the last step of the epoch before
                self._stop_between_epochs(epoch)
            t_epoch = time.perf_counter()
            stats = self.train_one_epoch(epoch)
            if hasattr(self.source, "epoch_stats"):
                stats.update(self.source.epoch_stats())
                if stats.get("source_time"):  # time the source spent making batches (synthesis)
                    step_time = max(stats["train_time"] - stats["source_time"], 1e-9)
                    stats["throughput"] = stats["samples"] / step_time if stats["steps"] else 0.0
            if not self._weights_finite():
                raise self._diverged("weights are no longer finite", epoch, stats["steps"])
            if epoch >= cfg.sched_start_epoch:
                self.scheduler.step()
            t_eval = time.perf_counter()
            if self.test_loader is not None:
                stats.update(self.run_evaluation())
            synchronize(self.device)
            stats["eval_time"] = time.perf_counter() - t_eval
            stats["epoch"] = epoch + 1  # 1-based, as the log, metrics.json and TensorBoard count
            stats["epoch_time"] = time.perf_counter() - t_epoch
            self.time_total += stats["epoch_time"]
            is_best = "top1" in stats and stats["top1"] > self.best_top1
            if is_best:
                self.best_top1, self.best_epoch = stats["top1"], epoch + 1
            self.history.append(stats)
            self._log_epoch(stats)
            self._save(self.state_dict(epoch), best=is_best and cfg.save_best)
            self.start_epoch = epoch + 1

    def _save(self, ckpt: dict, best: bool) -> None:
        """``last.pt`` (and ``best.pt``), by rank 0 alone; the other ranks wait for the files."""
        if self.dist.is_main:
            save_checkpoint(ckpt, self.last_path, keep_previous=True)
            if best:
                save_checkpoint(ckpt, self.best_path)
        distributed.barrier()

    def _log_epoch(self, s: Dict[str, float]) -> None:
        parts = [f"epoch {s['epoch']}/{self.cfg.epochs}"]
        if "loss" in s:
            parts.append(f"loss {s['loss']:.4f}")
        if "top1" in s:
            parts.append(f"test top1 {s['top1']:.2f} top5 {s['top5']:.2f} (best {self.best_top1:.2f})")
        parts.append(f"lr {s['lr']:.4g}")
        if s.get("steps"):
            parts.append(f"{s['throughput']:.0f} img/s")
        parts.append(f"{s['epoch_time']:.1f}s")
        extra = [f"{k} {int(v) if float(v).is_integer() else f'{v:.3g}'}" for k, v in s.items() if k.startswith("syn_")]
        self.logger.info(" | ".join(parts + extra))
        test_keys = ("top1", "top5", "test_loss")
        self.logger.scalars({f"{'test' if k in test_keys else 'train'}/{k}": v for k, v in s.items()
                             if isinstance(v, (int, float)) and k != "epoch"}, s["epoch"])
