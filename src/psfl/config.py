"""Typed run configuration: dataclasses, loaded from TOML and ``--set key=value``
overrides, validated once at the edge with messages that name the field.

Every run directory holds the fully resolved config (``config.toml``).
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from psfl.errors import PsflError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    source: str = "auto"  # auto | npz | torchvision | bundled
    data_dir: str | None = None
    num_clients: int = 9
    scheme: str = "dirichlet"  # dirichlet | iid
    alpha: float = 0.9  # Dirichlet concentration r
    sizes: str = "table1"  # table1 | none | comma-separated client sizes
    local_test_fraction: float = 0.2
    min_client_size: int = 10
    eval_samples: int = 1000  # global test samples scored per round (0 = all)
    local_eval_samples: int = 256  # per-client local test samples scored per round (0 = all)


@dataclass
class ModelConfig:
    family: str = "cpu"  # preset family: cpu | tiny | paper -> {family}-M/L/H and {family}-CSC
    student: str = ""  # default {family}-CSC
    mentor_rule: str = "table1"  # rule mapping client resources to GSC-M/L/H
    mentors: list[str] = field(default_factory=list)  # per-client override, e.g. ["M","M","L",...]
    mentor_init: str = ""  # optional MAE-pretrained checkpoint for mentors of the same arch


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
    eps: float = 1e-6  # guard on the adaptive-weight divisors
    pld: bool = True  # False: mentor and student trained on their task losses alone


@dataclass
class ChannelConfig:
    name: str = "awgn"
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


@dataclass
class EnergyConfig:
    bandwidth_hz: float = 1.0e6  # B_k,t per MU (OFDMA share); not given in the paper
    power_w: float = 0.1  # P_k,t (paper: P_max = 0.1 W)


@dataclass
class EvaluatorConfig:
    arch: str = "cnn"
    epochs: int = 3
    checkpoint: str = ""  # user-supplied classifier checkpoint
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
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    method_options: dict[str, Any] = field(default_factory=dict)  # per-method hyper-parameters

    def validate(self) -> "RunConfig":
        checks = [
            (self.rounds >= 1, "rounds", "must be >= 1"),
            (self.data.num_clients >= 1, "data.num_clients", "must be >= 1"),
            (self.data.alpha > 0, "data.alpha", "the Dirichlet concentration r must be > 0"),
            (0 <= self.data.local_test_fraction < 1, "data.local_test_fraction", "must be in [0, 1)"),
            (self.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (self.train.local_steps >= 1 or self.train.local_epochs >= 1, "train.local_steps",
             "local_steps or local_epochs must be >= 1"),
            (self.train.lr > 0, "train.lr", "must be > 0"),
            (self.train.temperature > 0, "train.temperature", "must be > 0"),
            (self.channel.snr_max_db >= self.channel.snr_min_db, "channel.snr_max_db",
             "must be >= channel.snr_min_db"),
            (self.agp.psi_max_db > self.agp.psi_min_db, "agp.psi_max_db", "must be > agp.psi_min_db"),
            (0 <= self.agp.zeta_min <= self.agp.zeta_max < 1, "agp.zeta_max",
             "need 0 <= zeta_min <= zeta_max < 1"),
            (self.energy.bandwidth_hz > 0, "energy.bandwidth_hz", "must be > 0"),
            (self.energy.power_w > 0, "energy.power_w", "must be > 0"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise PsflError(f"config field {name}: {msg}")
        from psfl.methods import METHODS

        if self.method not in METHODS:
            raise PsflError(f"config field method: unknown method {self.method!r}; "
                            f"known: {', '.join(METHODS.names())}")
        if self.model.mentors and len(self.model.mentors) != self.data.num_clients:
            raise PsflError(
                f"config field model.mentors: {len(self.model.mentors)} entries for "
                f"{self.data.num_clients} clients"
            )
        return self


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
        return dict(value)
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
        except (TypeError, ValueError):
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
    """Defaults <- TOML file <- ``key=value`` overrides; validated."""
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
    for item in overrides or []:
        keys, value = _parse_override(item)
        if keys[0] == "method_options":
            node = cfg.method_options
            for k in keys[1:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
            continue
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested)
    return cfg.validate()


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
