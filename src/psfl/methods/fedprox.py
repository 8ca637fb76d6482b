"""FedProx (Li et al., "Federated optimization in heterogeneous networks", MLSys 2020):
FedAvg whose clients minimise  F_k(w) + mu/2 ||w - w_t||^2  around the broadcast w_t.
Built only on the public method interface: one hook on the local-training loop."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from psfl.utils.errors import PsflError
from psfl.fl.local import LocalHook, Trained
from psfl.methods.base import METHODS
from psfl.methods.single import FedAvg, SingleModelOptions


@dataclass
class FedProxOptions(SingleModelOptions):
    mu: float = 0.01  # proximal weight (the paper tunes mu in {0.001, 0.01, 0.1, 1})

    def check(self, where: str) -> None:
        super().check(where)
        if not self.mu >= 0:
            raise PsflError(f"config field {where}.mu: must be >= 0")


class Proximal(LocalHook):
    """mu/2 ||w - w_t||^2 over the trained parameters (w_t: the round's start)."""

    def __init__(self, mu: float) -> None:
        self.mu = mu

    def extra_loss(self, t: Trained, out, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.mu == 0:
            return {}
        sq = sum((p - t.start[k]).pow(2).sum() for k, p in t.model.named_parameters())
        return {"prox": 0.5 * self.mu * sq}


@METHODS.register("fedprox")
class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg plus a proximal term mu/2 ||w - w_t||^2 locally."""

    name = "fedprox"
    Options = FedProxOptions

    def local_hooks(self, cid, state, rnd) -> list[LocalHook]:
        return [Proximal(self.options.mu)]
