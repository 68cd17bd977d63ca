"""DML: deep mutual learning (Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018,
Eq. 10 for K peers; AberHu/Knowledge-Distillation-Zoo ``train_dml.py``).

No teacher: K >= 2 peers learn together on the same batch. Peer k minimises

    CE(z_k, y) + lambda / (K - 1) * sum_{j != k} KL(sg(p_j) || p_k),   p = softmax(z) (T = 1),

the KL summed over classes and divided by the batch size (``batchmean``, as the Zoo's DML
criterion). With two peers this is the Zoo's per-net loss; with more the KL is averaged over
the other peers, as the paper's Eq. 10. Every peer sees the same batch and all peers step
together on predictions of the same forward (the Zoo's synchronous update; the paper's
Algorithm 1 recomputes predictions between peer updates).

Peer 1 is the run's student (evaluated, saved as ``model``); the other peers are built from
``--dml_peers`` (registered model names; default: one more freshly initialised copy of the
student's architecture) and are extra trainable modules. Peer k is initialised under its own
seed (the global seed plus k - 1, in a forked RNG that leaves the run's random stream as it was):
``kd/train.py`` re-seeds between building the student and the distiller, so peers drawn from the
global stream would repeat the student's initialisation. One optimiser over all peers equals
the Zoo's one optimiser per peer with the same settings, because every peer's loss only reaches
its own parameters: the other peers' probabilities are detached.

Loss names (so the trainer weights them right): ``ce`` (peer 1), ``ce_peer2``, ... weighted by
``-r``; ``dml_peer1``, ``dml_peer2``, ... (the averaged KL of each peer) weighted by ``-b`` =
lambda. Defaults ``-r 1 -a 0 -b 1`` (the Zoo's ``--lambda_kd 1.0``). ``eval_heads`` reports every
peer: ``student`` (peer 1, the reported ``top1``), ``peer2``, ...

Deviation: the Zoo initialises both nets from saved checkpoints (``--net1_init``/``--net2_init``);
here the extra peers start from their architecture's own random initialisation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers.base import Distiller, Weights, option
from kd.distillers.registry import register_distiller
from registry.models import get_model


def mutual_kl(logits: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over ``others`` of KL(sg(softmax(other)) || softmax(logits)), batchmean, T = 1."""
    log_p = F.log_softmax(logits, dim=1)
    terms = []
    for other in others:
        log_q = F.log_softmax(other.detach(), dim=1)
        terms.append((log_q.exp() * (log_q - log_p)).sum(1).mean())
    return torch.stack(terms).mean()


def dml_losses(peer_logits: Sequence[torch.Tensor], y: torch.Tensor, with_ce: bool = True,
               with_mutual: bool = True) -> Dict[str, torch.Tensor]:
    """Unweighted DML losses of every peer: ``ce``/``ce_peerK`` and ``dml_peerK`` (K from 1)."""
    losses: Dict[str, torch.Tensor] = {}
    for k, logits in enumerate(peer_logits, 1):
        if with_ce and y is not None:
            losses["ce" if k == 1 else f"ce_peer{k}"] = F.cross_entropy(logits, y)
        if with_mutual:
            others = [z for j, z in enumerate(peer_logits, 1) if j != k]
            losses[f"dml_peer{k}"] = mutual_kl(logits, others)
    return losses


def fresh_copy(model: nn.Module, num_classes: int, in_chans: int) -> nn.Module:
    """A newly initialised network of ``model``'s architecture (rebuilt from its registered
    name when it has one, else a deep copy with every ``reset_parameters`` re-run)."""
    name = getattr(model, "model_name", None)
    if name is not None:
        return get_model(name, num_classes=num_classes, in_chans=in_chans)
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return twin


def peer_seed(k: int) -> int:
    """The seed of peer ``k`` (k >= 2): the global generator's seed plus ``k - 1``."""
    return (torch.initial_seed() + k - 1) % (2 ** 63)


@register_distiller("dml")
class DML(Distiller):
    weights = Weights(r=1.0, a=0.0, b=1.0)
    needs_teacher = False

    @dataclass
    class Options:
        dml_peers: Tuple[str, ...] = option((), "DML: architectures of the peers besides the student "
                                                "(default: one more copy of the student's)")

    def setup(self) -> None:
        names = tuple(self.opts.dml_peers) or (None,)
        peers: List[nn.Module] = []
        for k, name in enumerate(names, 2):
            # each peer under its own seed, in a forked RNG: kd/train.py re-seeds before building the
            # distiller, so a peer drawn from the global stream would repeat the student's initialisation
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(peer_seed(k))
                peers.append(fresh_copy(self.student, self.data.num_classes, self.data.in_chans) if name is None
                             else get_model(name, num_classes=self.data.num_classes, in_chans=self.data.in_chans))
        p = next(self.student.parameters(), None)
        self.peers = nn.ModuleList([m.to(p.device) if p is not None else m for m in peers])

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {f"peer{k}": m for k, m in enumerate(self.peers, 2)}

    def all_peers(self) -> List[nn.Module]:
        return [self.student, *self.peers]

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        x, y, _ = self.unpack(batch)
        logits = [net(x) for net in self.all_peers()]
        return dml_losses(logits, y, with_ce=bool(self.w.r), with_mutual=bool(self.w.b))

    def eval_heads(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        heads = {"student": self.student(x)}
        heads.update({f"peer{k}": m(x) for k, m in enumerate(self.peers, 2)})
        return heads
