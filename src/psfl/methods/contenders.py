"""The contenders of Sec. V-C, each a faithful implementation with real wire formats.
All train GSC-M (``method_options.<name>.model`` changes it) with the same local budget
as PSFL (``train.local_steps``/``local_epochs``, ``batch_size``, optimiser).

STC (Sattler et al., 2019, "Robust and communication-efficient federated learning from
non-iid data"). Rules of the authors' reference implementation: clients compress the
weight update A_i = R_i + dW_i layer by layer with sparse ternary compression (top-k,
k = p * numel, to sign * mu), keep the residual R_i = A_i - STC(A_i) (error
accumulation); the server averages the compressed updates (plain mean), adds its own
residual, compresses the result again with the same p (downstream compression) and keeps
that residual; every participant applies the broadcast update to its synchronised copy.
Positions are Golomb-coded (codec ``stc``). Default p = 0.01 both ways (one of the
sparsity levels of the paper's sweep, 1/25 ... 1/400); option ``p``.
The first broadcast carries the dense initial model (clients must start from it).

FTTQ (Xu et al., 2020, "Ternary compression for communication-efficient federated
learning"). Each client trains with ternary weights in the forward pass: for every
conv/linear weight tensor, Delta_l = T_k * max|w_l|, w_t = alpha_l * sign(w_l) 1[|w_l| >
Delta_l] with a trainable per-layer scale alpha_l (initialised to the mean |w| above the
threshold) and straight-through gradients to the latent weights. It uploads the ternary
weights, 2 bits each, plus alpha_l (codec ``ternary2bit``); biases and normalisation
parameters stay float32. The server averages the de-quantised models (Eq. 10) and
broadcasts the full-precision global model. T_k = 0.05 (TTQ's threshold factor); option ``t``.

FedPAQ (Reisizadeh et al., AISTATS 2020). Partial participation: r = ceil(frac * K)
clients drawn uniformly without replacement each round (seeded; option ``participation``,
default 0.5); each runs the local budget (tau steps), quantises its model update with
QSGD's unbiased s-level stochastic quantiser, and the server adds the plain mean of the
de-quantised updates to the global model. s = 16 levels (option ``s``); the global model
is broadcast dense. As in the QSGD paper (Alistarh et al. 2017, bucket size d = 512),
every tensor is quantised in buckets of ``bucket`` consecutive elements, each with its own
norm (option ``bucket``; 0 = one norm per tensor: then with s = 16 almost every level of a
large tensor is 0 or 1 and s is nominal). Each bucket is one ``qsgd`` codec entry (norm,
signs and levels, fixed-width or Elias-coded; its entry header is counted in Z).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from psfl.codecs import (decode_qsgd_buckets, decode_state, ef_step, encode_qsgd_buckets, encode_state,
                         topk_ternarize, ttq_quantize)
from psfl.utils.errors import PsflError
from psfl.fl.agp import prunable_keys
from psfl.fl.aggregate import fedavg
from psfl.methods.base import METHODS, FederatedEnv, Upload, clone_state, make_generator
from psfl.methods.single import SingleModelMethod, SingleModelOptions
from psfl.methods.wire import decode_like, encode_model, wire_keys


def _sub(a: dict[str, Tensor], b: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    return {k: a[k].float() - b[k].float() for k in keys}


def _mean(states: list[dict[str, Tensor]], keys: list[str]) -> dict[str, Tensor]:
    return fedavg([{k: s[k] for k in keys} for s in states], [1.0] * len(states))


def _require(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise PsflError(f"config field {where}: {msg}")


@dataclass
class STCOptions(SingleModelOptions):
    p: float = 0.01  # share of entries kept per tensor, both directions

    def check(self, where: str) -> None:
        super().check(where)
        _require(0 < self.p <= 1, f"{where}.p", "must be in (0, 1]")


@dataclass
class FTTQOptions(SingleModelOptions):
    t: float = 0.05  # threshold factor T_k: Delta = t * max|w|

    def check(self, where: str) -> None:
        super().check(where)
        _require(0 < self.t < 1, f"{where}.t", "must be in (0, 1)")


@dataclass
class FedPAQOptions(SingleModelOptions):
    s: int = 16  # QSGD levels
    participation: float = 0.5  # share of clients drawn per round
    bucket: int = 512  # QSGD bucket size (the QSGD paper's d = 512); 0 = one norm per tensor

    def check(self, where: str) -> None:
        super().check(where)
        _require(self.s >= 1, f"{where}.s", "must be >= 1")
        _require(self.bucket >= 0, f"{where}.bucket", "must be >= 0 (0 = one bucket per tensor)")
        _require(0 < self.participation <= 1, f"{where}.participation", "must be in (0, 1]")


@METHODS.register("stc")
class STC(SingleModelMethod):
    """STC (Sattler et al. 2019): sparse ternary updates both ways with error accumulation."""
    name = "stc"
    uploads_updates = True
    robust_aggregation = False  # the mean update is sparsified again for the downlink
    secure_aggregation = False
    Options = STCOptions

    def __init__(self, env: FederatedEnv, options: STCOptions | None = None, cfg=None) -> None:
        super().__init__(env, options, cfg)
        self.p = self.options.p
        self.keys = wire_keys(self.template)
        self.server_residual: dict[str, Tensor] | None = None
        self.last_down: dict[str, Tensor] | None = None  # compressed update of this round

    def _stc(self, update: dict[str, Tensor], residual: dict[str, Tensor] | None
             ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        comp, res = {}, {}
        for k in self.keys:  # error accumulation: compress update + residual, keep what was not sent
            comp[k], res[k] = ef_step(update[k], None if residual is None else residual[k],
                                      lambda a: topk_ternarize(a, self.p)[0])
        return comp, res

    def _encode(self, comp: dict[str, Tensor]) -> bytes:
        return encode_state({k: comp[k] for k in self.keys}, lambda n, t: ("stc", {}))

    # server
    def encode_down(self, rnd: int) -> bytes:
        if self.last_down is None:  # round 0: the dense initial model
            return b"\x00" + encode_model(self.global_state)
        return b"\x01" + self._encode(self.last_down)

    def apply_uploads(self, decoded: list[dict[str, Tensor]], uploads: list[Upload]) -> None:
        avg = _mean(decoded, self.keys)
        down, self.server_residual = self._stc(avg, self.server_residual)
        for k in self.keys:
            self.global_state[k] = (self.global_state[k].float() + down[k]).to(self.global_state[k].dtype)
        self.last_down = down

    def decode_up(self, payload: bytes) -> dict[str, Tensor]:
        return decode_like(payload, self.template, self.keys)

    def server_state(self) -> dict[str, Any]:
        return {"global": self.global_state, "residual": self.server_residual, "down": self.last_down}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.global_state, self.server_residual, self.last_down = state["global"], state["residual"], state["down"]

    # client
    def init_client(self, cid: int) -> dict[str, Any]:
        return {"synced": None, "residual": None}

    def decode_down(self, state: dict[str, Any], payload: bytes) -> dict[str, Tensor]:
        body = payload[1:]
        if payload[0] == 0:
            from psfl.methods.wire import decode_model

            synced = {**self.template, **decode_model(body, self.template)}
        else:
            upd = decode_state(body, self.keys)
            synced = dict(state["synced"])
            for k in self.keys:
                synced[k] = (synced[k].float() + upd[k].view_as(synced[k])).to(synced[k].dtype)
        state["synced"] = clone_state(synced)
        return synced

    def encode_up(self, cid, state, local, start, generator) -> bytes:
        comp, state["residual"] = self._stc(_sub(local, start, self.keys), state["residual"])
        return self._encode(comp)


class _TernaryWeights(nn.Module):
    """FTTQ's trainable ternarisation of selected weights (latent weights + alpha_l)."""

    def __init__(self, net: nn.Module, keys: list[str], t: float) -> None:
        super().__init__()
        self.net, self.keys, self.t = net, keys, t
        params = dict(net.named_parameters())
        self.alpha = nn.ParameterDict()
        for k in keys:
            _, scale, _ = ttq_quantize(params[k], t, symmetric=True)
            self.alpha[k.replace(".", "__")] = nn.Parameter(torch.tensor(max(scale, 1e-8)))

    def ternary(self, k: str, w: Tensor) -> Tensor:
        delta = self.t * w.detach().abs().max()
        codes = (w.detach() > delta).float() - (w.detach() < -delta).float()
        alpha = self.alpha[k.replace(".", "__")]
        return alpha * codes + (w - w.detach())  # value alpha*codes; STE to w, d/dalpha = codes

    def weights(self) -> dict[str, Tensor]:
        params = dict(self.net.named_parameters())
        return {k: self.ternary(k, params[k]) for k in self.keys}

    def forward(self, *args, **kwargs):
        return functional_call(self.net, self.weights(), args, kwargs, strict=False)


@METHODS.register("fttq")
class FTTQ(SingleModelMethod):
    """FTTQ (Xu et al. 2020): trained ternary weights, 2-bit uploads, dense downlink."""
    name = "fttq"
    Options = FTTQOptions

    def __init__(self, env: FederatedEnv, options: FTTQOptions | None = None, cfg=None) -> None:
        super().__init__(env, options, cfg)
        self.t = self.options.t
        self.tern_keys = prunable_keys(self.net)  # conv/linear weights (all are parameters)
        self.keys = wire_keys(self.template)
        self._wrapped: _TernaryWeights | None = None

    def prepare_model(self, state: dict[str, Any]) -> nn.Module:
        self._wrapped = _TernaryWeights(self.net, self.tern_keys, self.t)
        return self._wrapped

    def local_state(self, model: nn.Module) -> dict[str, Tensor]:
        assert self._wrapped is not None
        with torch.no_grad():
            tern = {k: v.detach().cpu().clone() for k, v in self._wrapped.weights().items()}
        return {**{k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}, **tern}

    def encode_up(self, cid, state, local, start, generator) -> bytes:
        tern = set(self.tern_keys)
        return encode_state({k: local[k].float() for k in self.keys},
                            lambda n, t: ("ternary2bit", {}) if n in tern else ("dense", {}))

    def decode_up(self, payload: bytes) -> dict[str, Tensor]:
        return decode_like(payload, self.template, self.keys)


@METHODS.register("fedpaq")
class FedPAQ(SingleModelMethod):
    """FedPAQ (Reisizadeh et al. 2020): partial participation and QSGD-quantised updates."""
    name = "fedpaq"
    uploads_updates = True
    robust_aggregation = False  # the mean of the quantised updates (unbiased)
    secure_aggregation = False  # partial participation and update uploads: not wired for SecAgg+
    Options = FedPAQOptions

    def __init__(self, env: FederatedEnv, options: FedPAQOptions | None = None, cfg=None) -> None:
        super().__init__(env, options, cfg)
        self.s = self.options.s
        self.frac = self.options.participation
        self.keys = wire_keys(self.template)

    def participants(self, rnd: int, num_clients: int) -> list[int]:
        r = max(1, math.ceil(self.frac * num_clients))
        g = make_generator(self.cfg.seed, 0xFA9, rnd)
        return sorted(torch.randperm(num_clients, generator=g)[:r].tolist())

    def encode_up(self, cid, state, local, start, generator) -> bytes:
        return encode_qsgd_buckets(_sub(local, start, self.keys), self.s, self.options.bucket, generator)

    def decode_up(self, payload: bytes) -> dict[str, Tensor]:
        return decode_qsgd_buckets(payload, {k: self.template[k] for k in self.keys}, self.options.bucket)

    def apply_uploads(self, decoded: list[dict[str, Tensor]], uploads: list[Upload]) -> None:
        avg = _mean(decoded, self.keys)  # x_{k+1} = x_k + (1/r) sum_i Q(x_i - x_k)
        for k in self.keys:
            ref = self.global_state[k]
            self.global_state[k] = (ref.float() + avg[k].view_as(ref)).to(ref.dtype)
