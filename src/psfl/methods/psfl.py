"""PSFL = PLD (Algorithm 1) on the clients + FedAvg and AGP (Algorithm 2) on the server.

Per round t (Algorithm 2): the server computes zeta_t from the round's SNRs (Eq. 22),
prunes the aggregated student, broadcasts it with its mask (Eq. 23); each client loads
it, trains its personalised mentor and the student by PLD holding the mask, and uploads
the sparse student; the server decodes the uploads from their bytes and aggregates
them weighted by N_k (Eq. 10). Mentors (and their optimiser state and semantic bridge)
never leave the client.

Where the paper is silent, AGP's rules are ``[agp]`` settings (see
:mod:`psfl.fl.agp`): ``warmup_rounds`` (dense rounds before pruning starts), ``score`` and
``layer_floor`` (which survivors go), ``regrow`` (a regrown weight restarts at zero or at
the server's dense copy: its last aggregated value before it was pruned) and
``bn_recalibration`` (clients re-estimate the student's BatchNorm statistics before
uploading). The upload carries the kept values only: the mask came with the broadcast.

Options (``method_options.psfl``): ``distill`` (default true). The ablations fix the
mentor rule (``psfl-no-pld``: every mentor GSC-M) or switch AGP off (``psfl-no-agp``).
"""
from __future__ import annotations

from dataclasses import dataclass
import struct
from typing import Any

import numpy as np
import torch
from torch import nn

from psfl.fl.agp import apply_mask, prunable_keys, pruned_share, pruning_ratio, update_mask
from psfl.fl.aggregate import aggregate_states
from psfl.fl.local import HoldMask, LocalHook, Trained, local_train, recalibrate_bn
from psfl.methods.base import private_upload
from psfl.fl.mentors import assign_mentors
from psfl.fl.pld import SemanticBridge, pld_losses
from psfl.codecs import decode_qsgd_buckets, encode_qsgd_buckets
from psfl.utils.errors import PsflError
from psfl.methods.base import (
    METHODS, ClientResult, FederatedEnv, FederatedMethod, MethodOptions, Upload, check_state_finite, clone_state,
    local_batches, make_generator, make_optimizer,
)
from psfl.methods.wire import decode_kept, decode_masked, encode_kept, encode_masked


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@dataclass
class PSFLOptions(MethodOptions):
    """``distill``: PLD's distillation and semantic terms (Eqs. 17-19); false trains
    mentor and student on their task losses alone."""

    distill: bool = True


def load_mentor_init(path: str, preset: str, template: dict[str, torch.Tensor], tier: str) -> dict[str, torch.Tensor]:
    """Weights for a tier's mentor from a psfl model checkpoint; the checkpoint's preset
    and every tensor shape must match the tier's mentor (:class:`PsflError` otherwise)."""
    from psfl.models import load_model_checkpoint

    model = load_model_checkpoint(path)
    saved = getattr(model, "preset", {}).get("name", "?")
    state = model.state_dict()
    bad = [k for k in template if k not in state or state[k].shape != template[k].shape]
    if saved != preset or bad or set(state) != set(template):
        what = f"its tensors differ ({', '.join(bad[:3]) or 'key sets'})" if saved == preset else \
            f"it holds preset {saved!r}"
        raise PsflError(f"config field model.mentor_init.{tier}: {path} does not fit the {tier} mentor "
                        f"{preset!r}: {what}")
    return {k: v.detach().clone() for k, v in state.items()}


@METHODS.register("psfl")
class PSFL(FederatedMethod):
    """PSFL (the paper): PLD between personal GSC mentors and a shared CSC student; FedAvg
    and SNR-adaptive global pruning (AGP) of the student on the server."""

    supports_privacy = True
    robust_aggregation = True
    secure_aggregation = True

    name = "psfl"
    Options = PSFLOptions
    mentor_rule: str | None = None  # an ablation's fixed rule (None: model.mentor_rule)
    use_agp: bool = True  # False: the no-AGP ablation (agp.enabled is then ignored)

    @classmethod
    def unused_fields(cls, cfg) -> list[str]:
        """AGP's settings when pruning is off; the distillation's when PLD is off; the
        mentor assignment when an ablation fixes it."""
        from psfl.methods.validate import options_for

        out = []
        if not (cls.use_agp and cfg.agp.enabled):
            out += ["agp.psi_min_db", "agp.psi_max_db", "agp.zeta_min", "agp.zeta_max", "agp.prune_biases",
                    "agp.warmup_rounds", "agp.score", "agp.layer_floor", "agp.regrow", "agp.bn_recalibration"]
            out += [] if cls.use_agp else ["agp.enabled"]
        if not options_for(cfg, cls.name).distill:
            out += ["train.temperature", "train.eps", "train.distill_weight", "train.semantic_weight"]
        if cls.mentor_rule:
            out += ["model.mentor_rule", "model.mentors"]
        return out

    def __init__(self, env: FederatedEnv, options: PSFLOptions | None = None, cfg=None) -> None:
        super().__init__(env, options, cfg)
        cfg = self.cfg
        self.distill = self.options.distill
        self.agp = self.use_agp and cfg.agp.enabled
        rule = self.mentor_rule or cfg.model.mentor_rule
        self.tiers = assign_mentors(env.data.volumes, rule, [] if self.mentor_rule else cfg.model.mentors)
        self.student_preset = env.models.preset(cfg.model.student or "CSC")
        self.student = env.models.model(self.student_preset)
        self.template = env.models.fresh_state(self.student_preset, 0xB0B)  # same init for every method
        self.mask_keys = prunable_keys(self.student, cfg.agp.prune_biases)
        self.mentor_init: dict[str, dict[str, torch.Tensor]] = {}
        unused = sorted(set(cfg.model.mentor_init) - set(self.tiers))
        if unused:
            raise PsflError(f"config field model.mentor_init.{unused[0]}: no client has a {unused[0]} mentor "
                            f"(tiers here: {', '.join(self.tiers)})")
        for tier in sorted(set(self.tiers) & set(cfg.model.mentor_init)):
            preset = env.models.preset(tier)
            template = {k: v for k, v in env.models.model(preset).state_dict().items()}
            self.mentor_init[tier] = load_mentor_init(cfg.model.mentor_init[tier], preset, template, tier)
        self.bridges: dict[str, SemanticBridge] = {}
        self.global_state: dict[str, torch.Tensor] = {}
        self.mask: dict[str, torch.Tensor] | None = None
        self.dense: dict[str, torch.Tensor] | None = None  # agp.regrow = "dense": last value of every weight
        self.zeta = 0.0

    def model_presets(self) -> list[str]:
        """The student and the mentors of the tiers in use."""
        return [self.student_preset, *sorted({self.env.models.preset(t) for t in self.tiers})]

    # ---------------------------------------------------------------- server side
    def init_server(self) -> None:
        self.global_state = clone_state(self.template)
        self.mask = None
        self.dense = None

    def zeta_for(self, rnd: int, snrs_db: np.ndarray) -> float:
        """Eq. 22's ratio for round ``rnd``; 0 while AGP is off or warming up."""
        agp = self.cfg.agp
        if not self.agp or rnd < agp.warmup_rounds:
            return 0.0
        return pruning_ratio(snrs_db, agp.psi_min_db, agp.psi_max_db, agp.zeta_min, agp.zeta_max)

    def broadcast(self, rnd: int, snrs_db: np.ndarray) -> tuple[bytes, dict[str, float]]:
        agp = self.cfg.agp
        zeta = self.zeta_for(rnd, snrs_db)
        if agp.regrow == "dense":  # remember the latest value of every kept weight
            old = self.mask or {}
            self.dense = {k: torch.where(old[k].bool(), v, self.dense[k]) if self.dense and k in old else v.clone()
                          for k, v in self.global_state.items() if k in self.mask_keys}
        g = make_generator(self.cfg.seed, 0xA6B, rnd)
        self.mask = update_mask(self.global_state, self.mask, zeta, self.mask_keys, g,
                                agp.score, agp.layer_floor)  # Eq. 22 + regrow
        if self.dense is not None:  # regrown weights restart from their last value
            self.global_state.update({k: self.dense[k].clone() for k in self.mask_keys})
        self.global_state = apply_mask(self.global_state, self.mask)
        self.zeta = zeta
        payload = encode_masked(self.global_state, self.mask)  # Eq. 23 broadcast
        return payload, {"zeta": zeta, "pruned_share": pruned_share(self.mask)}

    def aggregate(self, rnd: int, uploads: list[Upload]) -> dict[str, float]:
        states = [self.decode_upload(u.payload) for u in uploads]
        sv = self.cfg.server  # Eq. 10 (mean) or a robust rule
        return self.apply_mean(rnd, aggregate_states(sv.aggregation, states, [u.num_samples for u in uploads], sv.trim))

    def apply_mean(self, rnd: int, mean: dict[str, torch.Tensor]) -> dict[str, float]:
        self.global_state.update(mean)
        return {}

    def decode_broadcast(self, payload: bytes) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.receive({}, payload)[0].items()}

    def decode_own_upload(self, broadcast: bytes, upload: bytes) -> dict[str, torch.Tensor]:
        start, mask = self.receive({}, broadcast)
        return decode_kept(upload, {k: v.cpu() for k, v in start.items()}, mask)

    def global_model(self) -> nn.Module:
        self.student.load_state_dict(self.global_state)
        return self.student

    def server_state(self) -> dict[str, Any]:
        return {"global": self.global_state, "mask": self.mask, "zeta": self.zeta, "dense": self.dense}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.global_state, self.mask, self.zeta = state["global"], state["mask"], state["zeta"]
        self.dense = state.get("dense")

    def round_metrics(self, clients: list[dict[str, Any]]) -> dict[str, float]:
        """``psfl_accuracy``: the paper's PSFL accuracy, the mean mentor accuracy."""
        return {"psfl_accuracy": _mean([c["mentor_acc"] for c in clients])}

    # ---------------------------------------------------------------- client side
    def receive(self, state: dict[str, Any], payload: bytes
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The broadcast -> (student weights to start from, mask to hold or None)."""
        down, mask = decode_masked(payload, self.template, self.mask_keys)
        return {**self.template, **down}, {k: m.to(self.env.models.device) for k, m in mask.items()}

    def send(self, state: dict[str, Any], rnd: int, student: dict[str, torch.Tensor], down: dict[str, torch.Tensor],
             mask: dict[str, torch.Tensor] | None, generator: torch.Generator) -> bytes:
        """The trained student -> upload bytes: the kept values only (the server knows
        the mask it broadcast; pruned positions cost nothing). ``down`` is what the
        client received this round."""
        return encode_kept(student, {k: m.cpu() for k, m in (mask or {}).items()})

    def decode_upload(self, payload: bytes) -> dict[str, torch.Tensor]:
        """Server side of :meth:`send`: an upload -> the client's student weights."""
        return decode_kept(payload, self.global_state, self.mask or {})  # no mask before the first broadcast

    def losses(self, out_m: Any, out_s: Any, x: torch.Tensor, y: torch.Tensor, bridge: SemanticBridge) -> Any:
        """Mentor and student loss terms of one batch: PLD, Eqs. 15-21."""
        t = self.cfg.train
        ev = self.env.evaluators
        return pld_losses(out_m, out_s, x, y, ev.loss_classifier, bridge, t.temperature, t.eps, self.distill,
                          ev.mse_scale, t.distill_weight, t.semantic_weight)

    def local_hooks(self, cid: int, state: dict[str, Any], rnd: int) -> list[LocalHook]:
        """Extra hooks of the local-training loop (a subclass's extension point); the AGP
        mask hook is always there."""
        return []

    def _bridge(self, tier: str) -> SemanticBridge:
        if tier not in self.bridges:
            mentor = self.env.models.model(self.env.models.preset(tier))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                self.bridges[tier] = SemanticBridge(self.student.sem_dim, mentor.sem_dim).to(self.env.models.device)
        return self.bridges[tier]

    def init_client(self, cid: int) -> dict[str, Any]:
        tier = self.tiers[cid]
        if tier in self.mentor_init:  # pre-trained (psfl pretrain) weights for this tier
            state = self.mentor_init[tier]
        else:
            state = self.env.models.fresh_state(self.env.models.preset(tier), 0x3E7, cid)  # own seeded init
        return {"tier": tier, "mentor": clone_state(state),
                "bridge": clone_state(self._bridge(tier).state_dict()), "opt": None}

    def client_update(self, cid: int, state: dict[str, Any], rnd: int, payload: bytes,
                      snr_db: float, generator: torch.Generator) -> ClientResult:
        cfg, env = self.cfg, self.env
        data = env.data.clients[cid]
        student, mentor = self.student, env.models.model(env.models.preset(state["tier"]))
        bridge = self._bridge(state["tier"])
        down, mask = self.receive(state, payload)
        student.load_state_dict(down)
        mentor.load_state_dict(state["mentor"])
        bridge.load_state_dict(state["bridge"])
        student.train(), mentor.train()
        t = cfg.train
        opt_m = make_optimizer(t.optimizer, list(mentor.parameters()) + list(bridge.parameters()),
                               t.lr, t.momentum, t.weight_decay)
        if state["opt"] is not None:
            opt_m.load_state_dict(clone_state(state["opt"]))
        opt_s = make_optimizer(t.optimizer, student.parameters(), t.student_lr or t.lr, t.momentum, t.weight_decay)
        trained = [Trained.of("mentor", mentor, opt_m), Trained.of("student", student, opt_s)]

        def objective(x: torch.Tensor, y: torch.Tensor):  # Eqs. 15-21 on one batch
            out_m = mentor(x, snr_db, generator=generator)
            out_s = student(x, snr_db, generator=generator)
            L = self.losses(out_m, out_s, x, y, bridge)
            return {"mentor": out_m, "student": out_s}, {"mentor": L.mentor, "student": L.student}

        hooks = [*([HoldMask("student", dict(student.named_parameters()), mask)] if mask is not None else []),
                 *self.local_hooks(cid, state, rnd)]
        batches = local_batches(data.x, data.y, t.batch_size, t.local_steps, t.local_epochs, generator)
        metrics = local_train(trained, batches, objective, hooks, t.grad_clip, rnd, cid)
        if self.agp and cfg.agp.bn_recalibration:  # statistics of the final (masked) weights
            recal = local_batches(data.x, data.y, t.batch_size, cfg.agp.bn_recalibration, 0, generator)
            recalibrate_bn(student, recal, lambda x: student(x, snr_db, generator=generator))
        check_state_finite(mentor.state_dict(), rnd, cid, "mentor weight")
        check_state_finite(student.state_dict(), rnd, cid, "student weight")
        state["mentor"] = clone_state(mentor.state_dict())
        state["bridge"] = clone_state(bridge.state_dict())
        state["opt"] = clone_state(opt_m.state_dict())
        sent = {k: v.detach().cpu() for k, v in student.state_dict().items()}
        received = {k: v.detach().cpu() for k, v in down.items()}
        sent = private_upload(cfg, sent, received, student, rnd, cid, mask)
        upload = self.send(state, rnd, sent, received, mask, generator)
        metrics["mentor_acc"] = env.local_accuracy(mentor, cid, rnd, snr_db)
        metrics["student_acc"] = env.local_accuracy(student, cid, rnd, snr_db)
        metrics["local_acc"] = metrics["mentor_acc"]  # the model the MU uses for SC services
        return ClientResult(upload, metrics)


@METHODS.register("psfl-no-pld")
class PSFLNoPLD(PSFL):
    """Ablation (Sec. V-B, Figs. 9-10): every MU takes GSC-M as mentor (no personalisation)."""

    name = "psfl-no-pld"
    mentor_rule = "uniform-M"


@METHODS.register("psfl-no-agp")
class PSFLNoAGP(PSFL):
    """Ablation: PSFL without pruning (zeta = 0 every round; dense uploads)."""

    name = "psfl-no-agp"
    use_agp = False


@dataclass
class PSFLPlusOptions(PSFLOptions):
    """``s``/``bucket``: QSGD levels and bucket size of the uploaded update of the kept
    weights (the QSGD paper's bucketed quantiser, d = 512)."""

    s: int = 16
    bucket: int = 512

    def check(self, where: str) -> None:
        if self.s < 1:
            raise PsflError(f"config field {where}.s: must be >= 1")
        if self.bucket < 0:
            raise PsflError(f"config field {where}.bucket: must be >= 0 (0 = one bucket per tensor)")


@METHODS.register("psfl-plus")
class PSFLPlus(PSFL):
    """psfl-plus (ours, beyond the paper): PSFL whose upload is the client's *update* of
    the kept conv/linear weights (trained minus received), QSGD-quantised in buckets
    (unbiased, ``s`` levels, Elias-coded when cheaper); the other entries (biases,
    BatchNorm) travel as float32 values. The server adds the decoded update to what it
    broadcast. Everything else is PSFL with the run's settings."""

    name = "psfl-plus"
    Options = PSFLPlusOptions
    secure_aggregation = False  # its upload is a quantised update (decode_upload needs the server's state)

    def _parts(self, state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(kept values of the prunable entries, flat; the other floating-point entries)."""
        kept = {k: state[k].reshape(-1).float() if mask is None else
                state[k].reshape(-1)[mask[k].reshape(-1).bool().cpu()].float() for k in self.mask_keys}
        rest = {k: v for k, v in state.items() if k not in kept and v.is_floating_point()}
        return kept, rest

    def send(self, state, rnd, student, down, mask, generator) -> bytes:
        new, rest = self._parts(student, mask)
        old, _ = self._parts(down, mask)
        head = encode_qsgd_buckets({k: new[k] - old[k] for k in new}, self.options.s, self.options.bucket, generator)
        return struct.pack("<I", len(head)) + head + encode_kept(rest, {})

    def decode_upload(self, payload: bytes) -> dict[str, torch.Tensor]:
        (n,) = struct.unpack_from("<I", payload, 0)
        old, rest_like = self._parts(self.global_state, self.mask)
        update = decode_qsgd_buckets(payload[4:4 + n], old, self.options.bucket)
        out = {**self.global_state, **decode_kept(payload[4 + n:], rest_like, {})}
        for k in self.mask_keys:
            full = torch.zeros(out[k].numel(), dtype=torch.float32)
            keep = slice(None) if self.mask is None else self.mask[k].reshape(-1).bool().cpu()
            full[keep] = old[k] + update[k]
            out[k] = full.view_as(out[k]).to(out[k].dtype)
        return out
