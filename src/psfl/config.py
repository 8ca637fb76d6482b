"""Typed run configuration: dataclasses, loaded from TOML and ``--set key=value``
overrides, validated once at the edge with messages that name the field.

Every run directory holds the fully resolved config (``config.toml``).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from psfl.utils.errors import PsflError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Physical range of every SNR setting (dB): wider than any link the paper considers
# (0..25 dB), narrow enough that 10^(SNR/10) and the channel noise stay finite in float32.
SNR_RANGE = (-50.0, 80.0)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    # auto: npz from data_dir when given (the file must be there), else the bundled
    # sample; resolved at load time, so config.toml records the source actually used.
    source: str = "auto"  # auto | npz | torchvision | bundled
    data_dir: str | None = None  # stored absolute
    num_clients: int = 9
    scheme: str = "dirichlet"  # dirichlet | iid
    alpha: float = 0.9  # Dirichlet concentration r
    sizes: str = "table1"  # table1 | none | comma-separated client sizes
    local_test_fraction: float = 0.2
    min_client_size: int = 10
    eval_samples: int = 1000  # global test samples scored per round (0 = all)
    local_eval_samples: int = 256  # per-client local test samples scored per round (0 = all)
    # > 0: tune on validation data: this many training images (per class, seeded) are held
    # out and take the test split's place (global and local scores, baselines); the test
    # split is not used and the evaluators train on the remaining images
    # (psfl.data.validation_view)
    validation_samples: int = 0


@dataclass
class ModelConfig:
    family: str = "cpu"  # preset family: cpu | tiny | paper -> {family}-M/L/H and {family}-CSC
    student: str = ""  # default {family}-CSC
    mentor_rule: str = "table1"  # rule mapping client resources to GSC-M/L/H
    mentors: list[str] = field(default_factory=list)  # per-client override, e.g. ["M","M","L",...]
    # per tier, a `psfl pretrain` / `save_model_checkpoint` file whose preset is that tier's
    # mentor preset, e.g. {M = "m.pt", H = "h.pt"}; tiers not named start from random weights
    mentor_init: dict[str, str] = field(default_factory=dict)
    # k/n of every SC model of the run (e.g. "1/6", "1/12"): complex channel symbols per
    # source value; each preset's channel width c is set to reach it (psfl.models.
    # channel_dim_for; provenance.json records the k/n reached). "" keeps each preset's c.
    # It changes what an image costs on the air, not the bits or energy of model uploads.
    bandwidth_ratio: str = ""

    def ratio(self) -> float | None:
        """``bandwidth_ratio`` as a number (None: each preset's own)."""
        from psfl.models import parse_ratio

        return parse_ratio(self.bandwidth_ratio, "config field model.bandwidth_ratio") \
            if self.bandwidth_ratio else None


@dataclass
class TrainConfig:
    local_steps: int = 10  # local steps per round (used when local_epochs == 0)
    local_epochs: int = 0  # G in Algorithm 1; > 0 overrides local_steps
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01  # GSC models (mentors, GSC contenders): best of {0.01, 0.03, 0.05} in 40-step probes
    student_lr: float = 0.05  # CSC models (PSFL's student, fedavg-csc); 0 = same as lr
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm per model (0 = off); keeps SGD on ViTs stable
    temperature: float = 1.0  # KD temperature in Eqs. 17-18
    distill_weight: float = 1.0  # weight of L_dis in Eqs. 20-21 (the paper: 1)
    semantic_weight: float = 1.0  # weight of L_sem in Eqs. 20-21 (the paper: 1)
    eps: float = 1e-6  # guard on the adaptive-weight divisors
    # The MSE(m, m_hat) term of Eqs. 15/16: its weight and the pixel space it is taken in.
    # "standardized" divides by the training set's pixel variance (MSE of z-scored
    # images, the scale of a mean/std-normalised input pipeline); "unit" is [0, 1] pixels.
    mse_weight: float = 1.0
    mse_space: str = "standardized"  # standardized | unit


@dataclass
class ChannelConfig:
    name: str = "awgn"  # awgn | rayleigh | rician: local training and every evaluation
    equalizer: str = "mmse"  # fading channels: mmse | zf | none
    rician_k: float = 3.0  # Rician K-factor (rician only)
    snr_trace: str = "uniform"  # per-client per-round SNR draw
    snr_min_db: float = 0.0
    snr_max_db: float = 25.0
    eval_snr_db: float = 10.0  # SNR for the global student's test metrics


@dataclass
class AGPConfig:
    enabled: bool = True
    psi_min_db: float = 0.0  # Eq. 22
    psi_max_db: float = 25.0
    zeta_min: float = 0.0
    zeta_max: float = 0.9  # zeta = 1 would prune everything
    prune_biases: bool = False
    # Where the paper is silent (issue-9 study, results/psfl-study/):
    warmup_rounds: int = 5  # rounds trained dense before AGP starts (the paper: "from a certain round t")
    score: str = "layer_normalised"  # which survivors go: layer_normalised | magnitude | per_layer
    layer_floor: float = 0.0  # share of every tensor that is never pruned
    regrow: str = "zeros"  # value of a regrown weight: zeros | dense (server's last value before pruning)
    bn_recalibration: int = 0  # > 0: clients re-estimate the student's BN statistics on this many batches


@dataclass
class ServerConfig:
    """How the server screens uploads before aggregating (every method, every engine)."""
    # An upload is rejected (logged in metrics.jsonl, left out of the aggregation, whose
    # weights renormalise over the rest) when it does not decode into the model's exact
    # entries and shapes, holds a non-finite value, or its norm (of the update, or of the
    # state minus the global model) exceeds max_norm_ratio x the median norm of the
    # round's uploads (0 = no norm bound; needs >= 3 uploads).
    max_norm_ratio: float = 10.0
    min_clients: int = 1  # fewer accepted uploads: the run stops after the last full round (resumable)
    # how accepted model states are combined: mean (Eq. 10, weighted by data volume), or
    # the robust coordinate-wise median / trimmed_mean (drops the trim share at each end)
    aggregation: str = "mean"
    trim: float = 0.1
    # Secure aggregation (Flower engine only: Flower's SecAgg+ workflow, Bell et al. 2020).
    # The server learns only the weighted sum of the clients' updates, never one upload, so
    # it cannot screen uploads one by one (max_norm_ratio, aggregation must stay default).
    # Each float entry of an update must lie within +-secagg_clip (SecAgg+ quantises that
    # range to 2^22 levels): a client whose update exceeds it fails the round, it is never
    # clipped silently. Only float entries are summed, as only they are ever uploaded.
    secure_aggregation: bool = False
    secagg_clip: float = 8.0
    secagg_shares: float = 1.0  # each client's secrets are shared with this share of the round's clients
    secagg_threshold: float = 0.5  # this share of those shares rebuilds a secret (dropout tolerance)


@dataclass
class PrivacyConfig:
    """Client-level differential privacy on the uploads (psfl.fl.privacy): each client
    clips its update to L2 norm ``clip`` and adds N(0, (noise_multiplier * clip)^2) noise;
    metrics.jsonl reports epsilon at ``delta`` after every round (Opacus' RDP accountant)."""
    clip: float = 0.0  # 0 = off
    noise_multiplier: float = 0.0  # sigma; > 0 needs clip > 0
    delta: float = 1e-5


@dataclass
class EnergyConfig:
    bandwidth_hz: float = 1.0e6  # B_k,t per MU (OFDMA share); not given in the paper
    power_w: float = 0.1  # P_k,t (paper: P_max = 0.1 W)


@dataclass
class EvaluatorConfig:
    """Two frozen classifiers, trained independently on the clean training split.

    The *loss classifier* (``arch``/``seed``) sits inside the task loss (Eqs. 15/16) and
    is what the SC models are optimised against. The *scorer* (``score_arch``/
    ``score_seed``) never enters a loss: its top-1 accuracy on reconstructions is the
    headline accuracy. Neither ever sees a test image; every score uses test images only.
    """
    arch: str = "cnn"
    epochs: int = 3
    seed: int = 0
    checkpoint: str = ""  # user-supplied loss-classifier checkpoint
    score_arch: str = "lenet"
    score_epochs: int = 3
    score_seed: int = 1
    score_checkpoint: str = ""  # user-supplied scorer checkpoint
    cache_dir: str = ""  # default $PSFL_CACHE or ~/.cache/psfl


@dataclass
class RunConfig:
    method: str = "psfl"
    seed: int = 0
    rounds: int = 10
    threads: int = 0  # torch threads; 0 = leave as is
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    agp: AGPConfig = field(default_factory=AGPConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    method_options: dict[str, Any] = field(default_factory=dict)  # per-method hyper-parameters

    def validate(self) -> "RunConfig":
        """Check every field once (bounds, registry names, method options); raises
        :class:`PsflError` naming the first bad field. Returns ``self``."""
        d, t, ch, a, ev = self.data, self.train, self.channel, self.agp, self.evaluator
        finite = math.isfinite
        checks = [
            (self.rounds >= 1, "rounds", "must be >= 1"),
            (self.threads >= 0, "threads", "must be >= 0 (0 = leave torch's default)"),
            (d.num_clients >= 1, "data.num_clients", "must be >= 1"),
            (d.alpha > 0 and finite(d.alpha), "data.alpha", "the Dirichlet concentration r must be > 0"),
            (0 <= d.local_test_fraction < 1, "data.local_test_fraction", "must be in [0, 1)"),
            (d.min_client_size >= 1, "data.min_client_size", "must be >= 1"),
            (d.eval_samples >= 0, "data.eval_samples", "must be >= 0 (0 = all)"),
            (d.local_eval_samples >= 0, "data.local_eval_samples", "must be >= 0 (0 = all)"),
            (d.validation_samples >= 0, "data.validation_samples", "must be >= 0 (0 = score on the test split)"),
            (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (t.local_steps >= 1 or t.local_epochs >= 1, "train.local_steps",
             "local_steps or local_epochs must be >= 1"),
            (t.local_epochs >= 0, "train.local_epochs", "must be >= 0"),
            (t.lr > 0 and finite(t.lr), "train.lr", "must be a finite number > 0"),
            (t.student_lr >= 0 and finite(t.student_lr), "train.student_lr", "must be finite and >= 0 (0 = lr)"),
            (0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)"),
            (t.weight_decay >= 0 and finite(t.weight_decay), "train.weight_decay", "must be finite and >= 0"),
            (t.grad_clip >= 0 and finite(t.grad_clip), "train.grad_clip", "must be finite and >= 0 (0 = off)"),
            (t.temperature > 0 and finite(t.temperature), "train.temperature", "must be > 0"),
            (t.eps > 0 and finite(t.eps), "train.eps", "must be > 0"),
            (t.mse_weight >= 0 and finite(t.mse_weight), "train.mse_weight", "must be finite and >= 0"),
            (all(SNR_RANGE[0] <= v <= SNR_RANGE[1] for v in (ch.snr_min_db, ch.snr_max_db)),
             "channel.snr_min_db", f"the SNR range must lie within {SNR_RANGE[0]:g}..{SNR_RANGE[1]:g} dB"),
            (SNR_RANGE[0] <= ch.eval_snr_db <= SNR_RANGE[1], "channel.eval_snr_db",
             f"must lie within {SNR_RANGE[0]:g}..{SNR_RANGE[1]:g} dB"),
            (all(SNR_RANGE[0] <= v <= SNR_RANGE[1] for v in (a.psi_min_db, a.psi_max_db)), "agp.psi_min_db",
             f"psi_min_db and psi_max_db must lie within {SNR_RANGE[0]:g}..{SNR_RANGE[1]:g} dB"),
            (ch.snr_max_db >= ch.snr_min_db, "channel.snr_max_db", "must be >= channel.snr_min_db"),
            (ch.rician_k >= 0 and finite(ch.rician_k), "channel.rician_k", "must be >= 0"),
            (a.psi_max_db > a.psi_min_db, "agp.psi_max_db", "must be > agp.psi_min_db"),
            (0 <= a.zeta_min <= a.zeta_max < 1, "agp.zeta_max", "need 0 <= zeta_min <= zeta_max < 1"),
            (a.warmup_rounds >= 0, "agp.warmup_rounds", "must be >= 0"),
            (a.score in AGP_SCORES, "agp.score", f"must be one of {', '.join(AGP_SCORES)}"),
            (0 <= a.layer_floor < 1, "agp.layer_floor", "must be in [0, 1)"),
            (a.regrow in AGP_REGROW, "agp.regrow", f"must be one of {', '.join(AGP_REGROW)}"),
            (a.bn_recalibration >= 0, "agp.bn_recalibration", "must be >= 0 (0 = off)"),
            (t.distill_weight >= 0 and finite(t.distill_weight), "train.distill_weight", "must be finite and >= 0"),
            (t.semantic_weight >= 0 and finite(t.semantic_weight), "train.semantic_weight",
             "must be finite and >= 0"),
            (1e3 <= self.energy.bandwidth_hz <= 1e11, "energy.bandwidth_hz", "must be within 1e3..1e11 Hz"),
            (1e-6 <= self.energy.power_w <= 1e3, "energy.power_w", "must be within 1e-6..1e3 W"),
            (self.server.max_norm_ratio == 0 or (self.server.max_norm_ratio > 1 and finite(self.server.max_norm_ratio)),
             "server.max_norm_ratio", "must be 0 (off) or a finite number > 1"),
            (1 <= self.server.min_clients <= d.num_clients, "server.min_clients",
             "must be between 1 and data.num_clients"),
            (self.privacy.clip >= 0 and finite(self.privacy.clip), "privacy.clip", "must be finite and >= 0 (0 = off)"),
            (self.privacy.noise_multiplier >= 0 and finite(self.privacy.noise_multiplier),
             "privacy.noise_multiplier", "must be finite and >= 0"),
            (self.privacy.noise_multiplier == 0 or self.privacy.clip > 0, "privacy.noise_multiplier",
             "needs privacy.clip > 0 (the noise is scaled to the clipping norm)"),
            (0 < self.privacy.delta < 1, "privacy.delta", "must be in (0, 1)"),
            (self.server.aggregation in ("mean", "median", "trimmed_mean"), "server.aggregation",
             "must be one of mean, median, trimmed_mean"),
            (0 < self.server.trim < 0.5, "server.trim", "must be in (0, 0.5)"),
            (0 < self.server.secagg_clip <= 1e4 and finite(self.server.secagg_clip), "server.secagg_clip",
             "must be in (0, 1e4]"),
            (0 < self.server.secagg_shares <= 1, "server.secagg_shares", "must be in (0, 1]"),
            (0 < self.server.secagg_threshold <= 1, "server.secagg_threshold", "must be in (0, 1]"),
            (not self.server.secure_aggregation or (self.server.aggregation == "mean"
                                                    and self.server.max_norm_ratio == ServerConfig().max_norm_ratio),
             "server.secure_aggregation", "the server sees only the sum of the uploads: server.aggregation must "
             "be mean and server.max_norm_ratio its default (no per-upload screening)"),
            (ev.epochs >= 1, "evaluator.epochs", "must be >= 1"),
            (ev.score_epochs >= 1, "evaluator.score_epochs", "must be >= 1"),
            (t.mse_space in MSE_SPACES, "train.mse_space", f"must be one of {', '.join(MSE_SPACES)}"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise PsflError(f"config field {name}: {msg}")
        if (ev.arch, ev.seed, ev.checkpoint) == (ev.score_arch, ev.score_seed, ev.score_checkpoint) \
                and not ev.checkpoint:
            raise PsflError("config field evaluator.score_arch: the scorer must differ from the loss "
                            "classifier (another arch or seed), or accuracy is not independent of the loss")
        self._check_names()
        self._check_mentors()
        self._check_sizes()
        self._check_unused()
        return self

    def _check_unused(self, method_unused: tuple[str, ...] = ()) -> None:
        """A non-default value that the run would never read is rejected, naming the field
        and why: settings made inert by another setting, and ``method_unused`` (the
        method-aware check, :func:`psfl.methods.check_run_config`, passes the fields the
        run's method does not read)."""
        default = RunConfig()
        ev = self.evaluator
        inert = [
            ("train.local_steps", self.train.local_epochs > 0, "train.local_epochs > 0 sets the local budget"),
            ("data.alpha", self.data.scheme != "dirichlet", "only the dirichlet scheme draws with alpha"),
            ("privacy.delta", self.privacy.noise_multiplier == 0, "without noise there is no (epsilon, delta)"),
            ("server.trim", self.server.aggregation != "trimmed_mean", "only server.aggregation = trimmed_mean trims"),
            ("server.secagg_clip", not self.server.secure_aggregation, "only server.secure_aggregation uses it"),
            ("server.secagg_shares", not self.server.secure_aggregation, "only server.secure_aggregation uses it"),
            ("server.secagg_threshold", not self.server.secure_aggregation, "only server.secure_aggregation uses it"),
            ("evaluator.arch", bool(ev.checkpoint), "evaluator.checkpoint gives the loss classifier"),
            ("evaluator.epochs", bool(ev.checkpoint), "evaluator.checkpoint gives the loss classifier"),
            ("evaluator.seed", bool(ev.checkpoint), "evaluator.checkpoint gives the loss classifier"),
            ("evaluator.score_arch", bool(ev.score_checkpoint), "evaluator.score_checkpoint gives the scorer"),
            ("evaluator.score_epochs", bool(ev.score_checkpoint), "evaluator.score_checkpoint gives the scorer"),
            ("evaluator.score_seed", bool(ev.score_checkpoint), "evaluator.score_checkpoint gives the scorer"),
        ]
        inert += [(f, True, f"method {self.method!r} does not read it with this config") for f in method_unused]
        for name, unused, why in inert:
            if unused and _get(self, name) != _get(default, name):
                raise PsflError(f"config field {name}: set to {_get(self, name)!r} but it has no effect here "
                                f"({why}); remove it")

    def _check_names(self) -> None:
        """String fields that name a registry entry."""
        from psfl.channel import CHANNELS, EQUALIZERS
        from psfl.data import DATASETS, PARTITIONERS, SOURCES
        from psfl.evaluate.classifiers import CLASSIFIERS
        from psfl.fl.energy import SNR_TRACES
        from psfl.fl.mentors import MENTOR_RULES
        from psfl.training.optim import OPTIMIZERS
        from psfl.models import MODELS

        family = self.model.family
        presets = [self.model.student or f"{family}-CSC"] + [f"{family}-{t}" for t in "MLH"]
        named = [
            ("data.dataset", self.data.dataset, DATASETS),
            ("data.source", self.data.source, SOURCES), ("data.scheme", self.data.scheme, PARTITIONERS),
            ("model.mentor_rule", self.model.mentor_rule, MENTOR_RULES),
            ("train.optimizer", self.train.optimizer, OPTIMIZERS),
            ("channel.name", self.channel.name, CHANNELS), ("channel.equalizer", self.channel.equalizer, EQUALIZERS),
            ("channel.snr_trace", self.channel.snr_trace, SNR_TRACES),
            ("evaluator.arch", self.evaluator.arch, CLASSIFIERS),
            ("evaluator.score_arch", self.evaluator.score_arch, CLASSIFIERS),
        ] + [("model.family" if i else "model.student", p, MODELS) for i, p in enumerate(presets)]
        for field_name, value, registry in named:
            if value not in registry:
                raise PsflError(f"config field {field_name}: unknown {registry.kind} {value!r}; "
                                f"known: {', '.join(registry.names())}")
        takes = channel_kwargs(self.channel)
        default = ChannelConfig()
        for field_name, param in CHANNEL_PARAMS:
            if param not in takes and getattr(self.channel, field_name) != getattr(default, field_name):
                having = [n for n in CHANNELS.names() if param in channel_kwargs(replace(self.channel, name=n))]
                raise PsflError(f"config field channel.{field_name}: channel {self.channel.name!r} has no "
                                f"{field_name} (only {', '.join(having)})")

    def _check_mentors(self) -> None:
        from psfl.fl.mentors import TIERS

        m = self.model
        m.ratio()  # a malformed model.bandwidth_ratio is refused here
        if m.mentors and len(m.mentors) != self.data.num_clients:
            raise PsflError(f"config field model.mentors: {len(m.mentors)} entries for "
                            f"{self.data.num_clients} clients")
        bad = [x for x in m.mentors if x not in TIERS]
        if bad:
            raise PsflError(f"config field model.mentors: unknown tier(s) {bad}; use M, L or H")
        for tier, path in m.mentor_init.items():
            if tier not in TIERS:
                raise PsflError(f"config field model.mentor_init: unknown tier {tier!r}; use M, L or H")
            if not Path(path).is_file():
                raise PsflError(f"config field model.mentor_init.{tier}: no such file {path}")

    def _check_sizes(self) -> None:
        if self.data.sizes not in ("table1", "none", ""):
            from psfl.data import parse_sizes

            try:
                n = len(parse_sizes(self.data.sizes, 10**12, self.data.num_clients) or [])
            except PsflError as e:
                raise PsflError(f"config field data.sizes: {e}") from None
            if n != self.data.num_clients:
                raise PsflError(f"config field data.sizes: {n} sizes for {self.data.num_clients} clients")


@dataclass
class PretrainConfig:
    model: str = "cpu-M"  # a GSC preset
    bandwidth_ratio: str = ""  # k/n of the mentor (as model.bandwidth_ratio of the runs it serves); "" = preset's
    dataset: str = "fashion_mnist"
    source: str = "auto"  # psfl.data source: auto / npz / bundled / torchvision
    data_dir: str | None = None
    max_train: int = 0  # use the first N training images (0: all)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False  # False keeps m_hat in pixel space, as Eq. 15's MSE needs
    snr_db: float | None = None  # None: noiseless link during pre-training
    epochs: int = 1
    steps: int = 0  # > 0: stop after this many optimiser steps (overrides epochs)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    eval_samples: int = 1000  # test images for the final masked / full reconstruction MSE
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda[:i] (psfl.utils.device.resolve_device)
    out: str | None = None  # checkpoint path (None: do not save)

    def validate(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise PsflError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.batch_size < 1 or self.epochs < 1 or self.steps < 0 or self.lr <= 0:
            raise PsflError("batch_size, epochs must be >= 1, steps >= 0 and lr > 0")
        from psfl.utils.device import resolve_device

        resolve_device(self.device)


MSE_SPACES = ("standardized", "unit")
AGP_SCORES = ("layer_normalised", "magnitude", "per_layer")  # psfl.fl.agp.SCORE_RULES
AGP_REGROW = ("zeros", "dense")
CHANNEL_PARAMS = (("equalizer", "equalize"), ("rician_k", "k_factor"))  # ChannelConfig field -> constructor


def channel_kwargs(ch: ChannelConfig) -> dict[str, Any]:
    """Constructor arguments of the configured channel: the ``CHANNEL_PARAMS`` its class
    takes (fading channels the equaliser, Rician its K-factor)."""
    import inspect

    from psfl.channel import CHANNELS

    params = inspect.signature(CHANNELS.get(ch.name)).parameters
    return {param: getattr(ch, f) for f, param in CHANNEL_PARAMS if param in params}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# --------------------------------------------------------------------------- loading


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a TOML/CLI value to the annotated type, or raise naming the field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except PsflError:
                continue
        raise PsflError(f"config field {name}: cannot read {value!r} as {tp}")
    if tp is Any:
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise PsflError(f"config field {name}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, name) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise PsflError(f"config field {name}: expected a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise PsflError(f"config field {name}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise PsflError(f"config field {name}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise PsflError(f"config field {name}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise PsflError(f"config field {name}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise PsflError(f"config field {name}: expected a string, got {value!r}")
        return str(value)
    raise PsflError(f"config field {name}: unsupported type {tp}")


def _apply(obj: Any, table: dict[str, Any], prefix: str = "") -> None:
    hints = _hints(type(obj))
    known = {f.name for f in fields(obj)}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise PsflError(f"unknown config field {name!r}; known: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise PsflError(f"config field {name}: expected a table")
            _apply(current, value, prefix=f"{name}.")
        elif isinstance(current, dict) and isinstance(value, dict):  # tables merge key by key
            setattr(obj, key, {**current, **_coerce(value, hints[key], name)})
        else:
            setattr(obj, key, _coerce(value, hints[key], name))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise PsflError(f"--set {item!r}: expected key=value, e.g. train.lr=0.01")
    key, raw = item.split("=", 1)
    try:  # TOML scalar/array syntax if it parses, else the raw string
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: RunConfig | None = None) -> RunConfig:
    """Defaults <- TOML file <- ``key=value`` overrides; paths made absolute, the data
    source resolved (:func:`resolve_config`), then validated."""
    cfg = base if base is not None else RunConfig()
    if path:
        p = Path(path)
        if not p.is_file():
            raise PsflError(f"config file not found: {p}")
        try:
            table = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise PsflError(f"config file {p}: invalid TOML ({e})") from None
        _apply(cfg, table)
    apply_overrides(cfg, overrides or [])
    return resolve_config(cfg).validate()


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``section.field=value`` items applied in order (``method_options.<m>.<opt>=v`` too)."""
    for item in overrides:
        keys, value = _parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        if keys[0] == "method_options":  # merged option by option: tables accumulate
            tables = nested["method_options"]
            if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
                raise PsflError(f"--set {item!r}: use method_options.<method>.<option>=value")
            for method, table in tables.items():
                cfg.method_options.setdefault(method, {}).update(table)
            continue
        _apply(cfg, nested)
    return cfg


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Make every path absolute (a run resumed from another directory reads the same
    files) and resolve ``data.source = "auto"``: ``npz`` when ``data.data_dir`` is given
    (the file must exist there: never a silent fallback), else the bundled sample."""
    def absolute(p: str, field: str) -> str:
        if "\0" in p:
            raise PsflError(f"config field {field}: a path cannot hold a NUL character")
        return str(Path(p).expanduser().resolve()) if p else p

    d, ev = cfg.data, cfg.evaluator
    if d.data_dir:
        d.data_dir = absolute(d.data_dir, "data.data_dir")
    ev.checkpoint = absolute(ev.checkpoint, "evaluator.checkpoint")
    ev.score_checkpoint = absolute(ev.score_checkpoint, "evaluator.score_checkpoint")
    ev.cache_dir = absolute(ev.cache_dir, "evaluator.cache_dir")
    cfg.model.mentor_init = {k: absolute(v, f"model.mentor_init.{k}") for k, v in cfg.model.mentor_init.items()}
    if d.source == "auto":
        from psfl.data import DATASETS

        if d.dataset not in DATASETS:
            return cfg  # validate() names the field
        info = DATASETS.get(d.dataset)
        if d.data_dir:
            f = Path(d.data_dir) / info.npz_file
            if not f.is_file():
                raise PsflError(f"config field data.data_dir: {f} not found (the dataset {d.dataset} must be "
                                f"there as {info.npz_file}, Keras layout)")
            d.source = "npz"
        elif info.bundled_file is not None:
            d.source = "bundled"
    if d.source == "npz" and not d.data_dir:
        raise PsflError("config field data.source: 'npz' needs data.data_dir (or --data-dir)")
    return cfg


def diff_configs(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted names of the fields whose values differ."""
    def flat(x: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in x.items():
            if isinstance(v, dict) and k != "method_options" and k != "mentor_init":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(config_to_dict(a)), flat(config_to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump_config(cfg: RunConfig) -> str:
    """Resolved config as TOML (None values are omitted: they are the defaults)."""
    d = config_to_dict(cfg)
    top = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) or k == "method_options"
           if v is not None]
    out = ["\n".join(top)]
    for k, v in d.items():
        if isinstance(v, dict) and k != "method_options":
            lines = [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
            out.append(f"[{k}]\n" + "\n".join(lines))
    return "\n\n".join(out) + "\n"
