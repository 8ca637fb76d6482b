"""FedKD (Wu et al., Nature Communications 2022) behind the public method interface.

Clients: the PSFL mentor tiers (a personal GSC mentor that never leaves the client) and
a shared CSC mentee, trained by FedKD's adaptive mutual distillation
(:func:`psfl.fl.fedkd.fedkd_losses`). Communication: every exchanged *update* of the
mentee is compressed by truncated SVD (codec ``svd``) at the energy threshold
T(t) = t_start + (t_end - t_start) (t + 1) / rounds (the authors' code: 0.95 -> 0.98):

    up:    client k sends SVD_T(w_k - w_synced)             (real factors; Z = 8 len(bytes))
    down:  server averages the decoded updates (Eq. 10 weights), sends SVD_T(mean) and
           applies exactly what it sent, so every synced copy equals the global mentee.

The first broadcast carries the dense initial mentee. No pruning (AGP is PSFL's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from psfl.codecs import decode_state, encode_state
from psfl.codecs.svd import energy_threshold
from psfl.utils.errors import PsflError
from psfl.fl.aggregate import fedavg
from psfl.fl.fedkd import fedkd_losses
from psfl.methods.base import METHODS, Upload, clone_state
from psfl.methods.psfl import PSFL, PSFLOptions
from psfl.methods.wire import decode_like, decode_model, encode_model, wire_keys


@dataclass
class FedKDOptions(PSFLOptions):
    t_start: float = 0.95  # SVD energy threshold in the first round
    t_end: float = 0.98  # ... and in the last

    def check(self, where: str) -> None:
        if not 0 <= self.t_start <= self.t_end <= 1:
            raise PsflError(f"config field {where}.t_end: need 0 <= t_start <= t_end <= 1")


def _add(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (a[k].float() + b[k].view_as(a[k]).float()).to(a[k].dtype) if k in b else a[k] for k in a}


@METHODS.register("fedkd")
class FedKD(PSFL):
    """FedKD (Wu et al. 2022): adaptive mutual distillation + SVD-compressed updates."""

    name = "fedkd"
    Options = FedKDOptions
    use_agp = False
    uploads_updates = True
    robust_aggregation = False
    secure_aggregation = False

    @classmethod
    def unused_fields(cls, cfg) -> list[str]:
        """PSFL's, plus PLD's term weights: FedKD's losses have their own form."""
        return super().unused_fields(cfg) + ["train.distill_weight", "train.semantic_weight"]

    def __init__(self, env, options: FedKDOptions | None = None, cfg=None) -> None:
        super().__init__(env, options, cfg)
        self.keys = wire_keys(self.template)
        self.down: bytes | None = None  # this round's compressed mean update

    def threshold(self, rnd: int) -> float:
        return energy_threshold(rnd, self.cfg.rounds, self.options.t_start, self.options.t_end)

    def _svd(self, update: dict[str, torch.Tensor], rnd: int) -> bytes:
        energy = self.threshold(rnd)
        return encode_state({k: update[k] for k in self.keys}, lambda n, t: ("svd", {"energy": energy}))

    # ---------------------------------------------------------------- server side
    def broadcast(self, rnd: int, snrs_db: np.ndarray) -> tuple[bytes, dict[str, float]]:
        payload = b"\x00" + encode_model(self.global_state) if self.down is None else b"\x01" + self.down
        return payload, {"energy_threshold": self.threshold(rnd)}

    def decode_upload(self, payload: bytes) -> dict[str, torch.Tensor]:
        return decode_like(payload, self.template, self.keys)

    def aggregate(self, rnd: int, uploads: list[Upload]) -> dict[str, float]:
        updates = [self.decode_upload(u.payload) for u in uploads]
        mean = fedavg(updates, [u.num_samples for u in uploads])  # Eq. 10 on the updates
        self.down = self._svd(mean, rnd)
        self.global_state = _add(self.global_state, decode_state(self.down, self.keys))  # exactly what is sent
        return {}

    def server_state(self) -> dict[str, Any]:
        return {"global": self.global_state, "down": self.down}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.global_state, self.down = state["global"], state["down"]

    def init_server(self) -> None:
        super().init_server()
        self.down = None

    # ---------------------------------------------------------------- client side
    def init_client(self, cid: int) -> dict[str, Any]:
        return {**super().init_client(cid), "synced": None}

    def receive(self, state, payload):
        if payload[0] == 0:
            synced = {**self.template, **decode_model(payload[1:], self.template)}
        else:
            synced = _add(state["synced"], decode_state(payload[1:], self.keys))
        state["synced"] = clone_state(synced)
        return synced, None  # no mask to hold

    def send(self, state, rnd, student, down, mask, generator):
        return self._svd({k: student[k].float() - state["synced"][k].float() for k in self.keys}, rnd)

    def losses(self, out_m, out_s, x, y, bridge):
        if not self.distill:  # task losses only (as PSFL's distill = false)
            return super().losses(out_m, out_s, x, y, bridge)
        t = self.cfg.train
        return fedkd_losses(out_m, out_s, x, y, self.env.evaluators.loss_classifier, bridge, t.temperature, t.eps,
                            self.env.evaluators.mse_scale)
