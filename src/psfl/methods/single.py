"""Single-model federated methods (one architecture trained by every client on its
task loss, Eqs. 8 + MSE): FedAvg and the compressed contenders build on
:class:`SingleModelMethod`, which fixes the local budget (same steps, batch size and
optimiser as PSFL's student) and leaves the wire format to subclasses:

    encode_down / decode_down   server -> clients
    encode_up   / decode_up     client -> server (from the local and the global weights)
    apply_uploads               server update from the decoded uploads

The contenders of Sec. V-C train GSC-M (``model = "M"``); ``fedavg-csc`` trains the CSC.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from psfl.utils.errors import PsflError
from psfl.fl.aggregate import aggregate_states
from psfl.fl.local import LocalHook, Trained, local_train
from psfl.methods.base import private_upload
from psfl.methods.base import (
    METHODS, ClientResult, FederatedEnv, FederatedMethod, MethodOptions, Upload, check_state_finite, clone_state,
    local_batches, make_optimizer,
)
from psfl.methods.wire import decode_model, encode_model


@dataclass
class SingleModelOptions(MethodOptions):
    """``model``: the architecture every client trains, a tier (``M``, ``L``, ``H``,
    ``CSC`` of the run's preset family) or a full preset name."""

    model: str = "M"

    def check(self, where: str) -> None:
        from psfl.models import MODELS

        if self.model not in ("M", "L", "H", "CSC") and self.model not in MODELS:
            raise PsflError(f"config field {where}.model: {self.model!r} is neither a tier (M, L, H, CSC) "
                            f"nor a model preset")


@dataclass
class CSCOptions(SingleModelOptions):
    model: str = "CSC"


PSFL_ONLY = ("agp.enabled", "agp.psi_min_db", "agp.psi_max_db", "agp.zeta_min", "agp.zeta_max", "agp.prune_biases",
             "agp.warmup_rounds", "agp.score", "agp.layer_floor", "agp.regrow", "agp.bn_recalibration",
             "model.student", "model.mentor_rule", "model.mentors", "model.mentor_init", "train.temperature",
             "train.eps", "train.distill_weight", "train.semantic_weight")


class SingleModelMethod(FederatedMethod):
    Options = SingleModelOptions
    supports_privacy = True
    robust_aggregation = True
    secure_aggregation = True  # FedAvg, FedAvg-CSC, FedProx, FTTQ: the mean of decoded states

    @classmethod
    def unused_fields(cls, cfg) -> list[str]:
        """PSFL's pruning, mentor and distillation settings, and the learning rate of the
        other model family (``train.lr`` for GSC models, ``train.student_lr`` for the CSC)."""
        from psfl.methods.validate import options_for
        from psfl.models import MODELS

        tier = options_for(cfg, cls.name).model
        preset = tier if "-" in tier else f"{cfg.model.family}-{tier}"
        csc = preset in MODELS and MODELS.get(preset).family == "csc"
        lr_field = ("train.lr" if cfg.train.student_lr > 0 else None) if csc else "train.student_lr"
        return [*PSFL_ONLY, *([lr_field] if lr_field else [])]

    def __init__(self, env: FederatedEnv, options: SingleModelOptions | None = None, cfg=None) -> None:
        super().__init__(env, options, cfg)
        self.preset = env.models.preset(self.options.model)
        self.net = env.models.model(self.preset)
        self.template = env.models.fresh_state(self.preset, 0xB0B)  # same init for every method
        self.global_state: dict[str, Tensor] = {}

    def model_presets(self) -> list[str]:
        return [self.preset]

    # ---------------------------------------------------------------- hooks
    def encode_down(self, rnd: int) -> bytes:
        return encode_model(self.global_state)

    def decode_down(self, state: dict[str, Any], payload: bytes) -> dict[str, Tensor]:
        return {**self.template, **decode_model(payload, self.template)}

    def encode_up(self, cid: int, state: dict[str, Any], local: dict[str, Tensor],
                  start: dict[str, Tensor], generator: torch.Generator) -> bytes:
        return encode_model(local)

    def decode_up(self, payload: bytes) -> dict[str, Tensor]:
        return decode_model(payload, self.template)

    def decode_upload(self, payload: bytes) -> dict[str, Tensor]:
        return self.decode_up(payload)

    def apply_uploads(self, decoded: list[dict[str, Tensor]], uploads: list[Upload]) -> None:
        s = self.cfg.server  # Eq. 10 (mean) or a robust rule
        self.global_state.update(aggregate_states(s.aggregation, decoded, [u.num_samples for u in uploads], s.trim))

    def apply_mean(self, rnd: int, mean: dict[str, Tensor]) -> dict[str, float]:
        """Secure aggregation: ``mean`` is what ``apply_uploads`` computes with Eq. 10."""
        self.global_state.update(mean)
        return {}

    def decode_broadcast(self, payload: bytes) -> dict[str, Tensor]:
        return self.decode_down({}, payload)

    def decode_own_upload(self, broadcast: bytes, upload: bytes) -> dict[str, Tensor]:
        return self.decode_up(upload)

    def local_hooks(self, cid: int, state: dict[str, Any], rnd: int) -> list[LocalHook]:
        """Hooks of the local-training loop (:mod:`psfl.fl.local`): the extension point
        for a method that changes local training (e.g. FedProx's proximal term)."""
        return []

    def prepare_model(self, state: dict[str, Any]) -> nn.Module:
        """The module trained locally (a subclass may wrap it, e.g. ternary weights)."""
        return self.net

    # ---------------------------------------------------------------- server side
    def init_server(self) -> None:
        self.global_state = clone_state(self.template)

    def broadcast(self, rnd: int, snrs_db: np.ndarray) -> tuple[bytes, dict[str, float]]:
        return self.encode_down(rnd), {}

    def aggregate(self, rnd: int, uploads: list[Upload]) -> dict[str, float]:
        self.apply_uploads([self.decode_up(u.payload) for u in uploads], uploads)
        return {}

    def global_model(self) -> nn.Module:
        self.net.load_state_dict(self.global_state)
        return self.net

    def server_state(self) -> dict[str, Any]:
        return {"global": self.global_state}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.global_state = state["global"]

    # ---------------------------------------------------------------- client side
    def init_client(self, cid: int) -> dict[str, Any]:
        return {}

    def client_update(self, cid: int, state: dict[str, Any], rnd: int, payload: bytes,
                      snr_db: float, generator: torch.Generator) -> ClientResult:
        env, t = self.env, self.cfg.train
        data = env.data.clients[cid]
        start = self.decode_down(state, payload)
        self.net.load_state_dict(start)
        model = self.prepare_model(state)
        model.train()
        lr = t.student_lr if self.net.family == "csc" and t.student_lr > 0 else t.lr
        opt = make_optimizer(t.optimizer, model.parameters(), lr, t.momentum, t.weight_decay)

        def objective(x: Tensor, y: Tensor):  # Eqs. 8 + 15/16
            out = model(x, snr_db, generator=generator)
            terms, _ = env.evaluators.task_terms(out, x, y)
            return {"local": out}, {"local": {**terms, "total": terms["task"]}}

        batches = local_batches(data.x, data.y, t.batch_size, t.local_steps, t.local_epochs, generator)
        metrics = local_train([Trained.of("local", model, opt)], batches, objective,
                              self.local_hooks(cid, state, rnd), t.grad_clip, rnd, cid)
        local = self.local_state(model)
        check_state_finite(local, rnd, cid, "local weight")
        local = private_upload(self.cfg, local, start, self.net, rnd, cid)
        upload = self.encode_up(cid, state, local, start, generator)
        metrics["local_acc"] = env.local_accuracy(model, cid, rnd, snr_db)
        return ClientResult(upload, metrics)

    def local_state(self, model: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}


@METHODS.register("fedavg")
class FedAvg(SingleModelMethod):
    """FedAvg (McMahan et al.): dense float32 weights both ways, Eq. 10 on the server.
    The paper's FedAvg is "PSFL without PLD and AGP" on GSC-M."""

    name = "fedavg"


@METHODS.register("fedavg-csc")
class FedAvgCSC(SingleModelMethod):
    """Ablation: FedAvg on the CSC student alone (no mentor, no pruning)."""

    name = "fedavg-csc"
    Options = CSCOptions
