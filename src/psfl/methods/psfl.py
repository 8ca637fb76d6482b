"""PSFL = PLD (Algorithm 1) on the clients + FedAvg and AGP (Algorithm 2) on the server.

Per round t (Algorithm 2): the server computes zeta_t from the round's SNRs (Eq. 22),
prunes the aggregated student, broadcasts it with its mask (Eq. 23); each client loads
it, trains its personalised mentor and the student by PLD holding the mask, and uploads
the sparse student; the server decodes the uploads from their bytes and aggregates
them weighted by N_k (Eq. 10). Mentors (and their optimiser state and semantic bridge)
never leave the client.

Options (``method_options.<name>``): ``distill`` (default true), ``agp`` (default from
config), ``mentor_rule`` (default from config).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from psfl.fl.agp import apply_mask, mask_parameters_, prunable_keys, pruned_share, pruning_ratio, update_mask
from psfl.fl.aggregate import fedavg
from psfl.fl.mentors import assign_mentors
from psfl.fl.pld import SemanticBridge, pld_losses
from psfl.methods.base import (
    METHODS, ClientResult, FederatedEnv, FederatedMethod, Upload, clipped_step, clone_state, local_batches,
    make_generator, make_optimizer,
)
from psfl.methods.wire import decode_masked, decode_model, encode_masked, encode_model


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class _Scored(nn.Module):
    """model -> reconstruction -> evaluator logits, so the SC model can be scored by
    :func:`psfl.evaluate.classifier_accuracy` (one accuracy loop in the code base)."""

    def __init__(self, model: nn.Module, evaluator: nn.Module, snr_db: float, generator: torch.Generator):
        super().__init__()
        self.model, self.evaluator, self.snr_db, self.generator = model, evaluator, snr_db, generator
        self.train(model.training)  # classifier_accuracy restores this mode afterwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluator(self.model(x, self.snr_db, generator=self.generator).x_hat)


def accuracy_at(model: nn.Module, evaluator: nn.Module, x: torch.Tensor, y: torch.Tensor, snr_db: float,
                generator: torch.Generator, batch_size: int = 256) -> float:
    """Evaluator accuracy on the model's reconstructions of ``x`` at ``snr_db``."""
    from psfl.evaluate import classifier_accuracy

    return classifier_accuracy(_Scored(model, evaluator, snr_db, generator), x, y, batch_size)


@METHODS.register("psfl")
class PSFL(FederatedMethod):
    name = "psfl"

    def __init__(self, env: FederatedEnv, options: dict[str, Any] | None = None) -> None:
        super().__init__(env, options)
        cfg = self.cfg
        self.distill = bool(self.options.get("distill", cfg.train.pld))
        self.agp = bool(self.options.get("agp", cfg.agp.enabled))
        rule = str(self.options.get("mentor_rule", cfg.model.mentor_rule))
        self.tiers = assign_mentors(env.volumes, rule, cfg.model.mentors)
        self.student_preset = env.preset(cfg.model.student or "CSC")
        self.student = env.model(self.student_preset)
        self.template = env.fresh_state(self.student_preset, 0xB0B)  # same init for every method
        self.mask_keys = prunable_keys(self.student, cfg.agp.prune_biases)
        self.bridges: dict[str, SemanticBridge] = {}
        self.global_state: dict[str, torch.Tensor] = {}
        self.mask: dict[str, torch.Tensor] | None = None
        self.zeta = 0.0

    # ---------------------------------------------------------------- server side
    def init_server(self) -> None:
        self.global_state = clone_state(self.template)
        self.mask = None

    def broadcast(self, rnd: int, snrs_db: np.ndarray) -> tuple[bytes, dict[str, float]]:
        agp = self.cfg.agp
        zeta = pruning_ratio(snrs_db, agp.psi_min_db, agp.psi_max_db, agp.zeta_min, agp.zeta_max) if self.agp else 0.0
        g = make_generator(self.cfg.seed, 0xA6B, rnd)
        self.mask = update_mask(self.global_state, self.mask, zeta, self.mask_keys, g)  # Eq. 22 + regrow
        self.global_state = apply_mask(self.global_state, self.mask)
        self.zeta = zeta
        payload = encode_masked(self.global_state, self.mask)  # Eq. 23 broadcast
        return payload, {"zeta": zeta, "pruned_share": pruned_share(self.mask)}

    def aggregate(self, rnd: int, uploads: list[Upload]) -> dict[str, float]:
        states = [decode_model(u.payload, self.global_state) for u in uploads]
        avg = fedavg(states, [u.num_samples for u in uploads])  # Eq. 10
        self.global_state.update(avg)
        return {}

    def global_model(self) -> nn.Module:
        self.student.load_state_dict(self.global_state)
        return self.student

    def server_state(self) -> dict[str, Any]:
        return {"global": self.global_state, "mask": self.mask, "zeta": self.zeta}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.global_state, self.mask, self.zeta = state["global"], state["mask"], state["zeta"]

    # ---------------------------------------------------------------- client side
    def _bridge(self, tier: str) -> SemanticBridge:
        if tier not in self.bridges:
            mentor = self.env.model(self.env.preset(tier))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                self.bridges[tier] = SemanticBridge(self.student.sem_dim, mentor.sem_dim)
        return self.bridges[tier]

    def init_client(self, cid: int) -> dict[str, Any]:
        tier = self.tiers[cid]
        state = self.env.fresh_state(self.env.preset(tier), 0x3E7, cid)  # own seeded init
        if self.cfg.model.mentor_init:
            from psfl.models import load_model_checkpoint

            state = load_model_checkpoint(self.cfg.model.mentor_init).state_dict()
        return {"tier": tier, "mentor": clone_state(state),
                "bridge": clone_state(self._bridge(tier).state_dict()), "opt": None}

    def client_update(self, cid: int, state: dict[str, Any], rnd: int, payload: bytes,
                      snr_db: float, generator: torch.Generator) -> ClientResult:
        cfg, env = self.cfg, self.env
        data = env.clients[cid]
        student, mentor = self.student, env.model(env.preset(state["tier"]))
        bridge = self._bridge(state["tier"])
        down, mask = decode_masked(payload, self.template, self.mask_keys)
        student.load_state_dict({**self.template, **down})
        mentor.load_state_dict(state["mentor"])
        bridge.load_state_dict(state["bridge"])
        student.train(), mentor.train()
        t = cfg.train
        opt_m = make_optimizer(t.optimizer, list(mentor.parameters()) + list(bridge.parameters()),
                               t.lr, t.momentum, t.weight_decay)
        if state["opt"] is not None:
            opt_m.load_state_dict(clone_state(state["opt"]))
        opt_s = make_optimizer(t.optimizer, student.parameters(), t.student_lr or t.lr, t.momentum, t.weight_decay)
        params_s = dict(student.named_parameters())
        logs: dict[str, list[float]] = {}
        for x, y in local_batches(data.x, data.y, t.batch_size, t.local_steps, t.local_epochs, generator):
            out_m = mentor(x, snr_db, generator=generator)
            out_s = student(x, snr_db, generator=generator)
            L = pld_losses(out_m, out_s, x, y, env.evaluator, bridge, t.temperature, t.eps, self.distill)
            opt_m.zero_grad(set_to_none=True)
            opt_s.zero_grad(set_to_none=True)
            L.joint.backward()
            clipped_step(opt_m, t.grad_clip)
            clipped_step(opt_s, t.grad_clip)
            mask_parameters_(params_s, mask)  # the broadcast mask is held during training
            for who, terms in (("mentor", L.mentor), ("student", L.student)):
                for k, v in terms.items():
                    logs.setdefault(f"{who}_{k}", []).append(float(v.detach()))
        state["mentor"] = clone_state(mentor.state_dict())
        state["bridge"] = clone_state(bridge.state_dict())
        state["opt"] = clone_state(opt_m.state_dict())
        upload = encode_model(student.state_dict(), sparse=set(self.mask_keys))
        g_eval = make_generator(cfg.seed, 0xE7A, rnd, cid)
        metrics = {k: _mean(v) for k, v in logs.items()}
        metrics["mentor_acc"] = accuracy_at(mentor, env.evaluator, data.x_test, data.y_test, snr_db, g_eval)
        metrics["student_acc"] = accuracy_at(student, env.evaluator, data.x_test, data.y_test, snr_db, g_eval)
        metrics["local_acc"] = metrics["mentor_acc"]  # the model the MU uses for SC services
        return ClientResult(upload, metrics)


@METHODS.register("psfl-no-pld")
class PSFLNoPLD(PSFL):
    """Ablation (Sec. V-B, Figs. 9-10): every MU takes GSC-M as mentor (no personalisation)."""

    name = "psfl-no-pld"

    def __init__(self, env: FederatedEnv, options: dict[str, Any] | None = None) -> None:
        super().__init__(env, {"mentor_rule": "uniform-M", **(options or {})})


@METHODS.register("psfl-no-agp")
class PSFLNoAGP(PSFL):
    """Ablation: PSFL without pruning (zeta = 0 every round; dense uploads)."""

    name = "psfl-no-agp"

    def __init__(self, env: FederatedEnv, options: dict[str, Any] | None = None) -> None:
        super().__init__(env, {"agp": False, **(options or {})})
