"""Method-aware checks of a run config (the method layer's part of validation: the core
``RunConfig.validate`` knows no methods). Runners and the CLI call
:func:`check_run_config` once, before any work."""
from __future__ import annotations

from typing import Any

from psfl.config import RunConfig, _apply
from psfl.utils.errors import PsflError
from psfl.methods.base import METHODS, MethodOptions


def method_options(method: str, table: dict[str, Any]) -> MethodOptions:
    """``table`` read into ``method``'s options dataclass (``Method.Options``): unknown or
    ill-typed options raise naming ``method_options.<method>.<field>``."""
    if method not in METHODS:
        raise PsflError(f"config field method_options.{method}: unknown method {method!r}; "
                        f"known: {', '.join(METHODS.names())}")
    if not isinstance(table, dict):
        raise PsflError(f"config field method_options.{method}: expected a table of options")
    opts = METHODS.get(method).Options()
    _apply(opts, table, prefix=f"method_options.{method}.")
    opts.check(f"method_options.{method}")
    return opts


def options_for(cfg: RunConfig, method: str | None = None) -> MethodOptions:
    """The typed options of ``method`` (default: the run's method) under ``cfg``."""
    name = method or cfg.method
    return method_options(name, cfg.method_options.get(name, {}))


def check_run_config(cfg: RunConfig, unused: bool = True) -> RunConfig:
    """The run's method exists, every ``method_options`` table is valid, and (``unused``)
    no field the method never reads holds a non-default value. ``psfl compare`` checks
    its shared config against ``cfg.method`` only (``unused=False`` for the other
    methods, which legitimately ignore PSFL's settings). Returns ``cfg``."""
    if cfg.method not in METHODS:
        raise PsflError(f"config field method: unknown method {cfg.method!r}; known: {', '.join(METHODS.names())}")
    for name, table in cfg.method_options.items():
        method_options(name, table)
    from psfl.config import PrivacyConfig

    if cfg.privacy != PrivacyConfig() and not METHODS.get(cfg.method).supports_privacy:
        raise PsflError(f"config field privacy.clip: method {cfg.method!r} does not implement client-level "
                        "differential privacy; remove the [privacy] settings")
    if cfg.server.aggregation != "mean" and not METHODS.get(cfg.method).robust_aggregation:
        raise PsflError(f"config field server.aggregation: method {cfg.method!r} has its own server rule; "
                        "only mean applies")
    if cfg.server.secure_aggregation and not METHODS.get(cfg.method).secure_aggregation:
        raise PsflError(f"config field server.secure_aggregation: method {cfg.method!r} does not aggregate "
                        "by the mean of decoded states, which is all secure aggregation reveals")
    if unused:
        cfg._check_unused(tuple(METHODS.get(cfg.method).unused_fields(cfg)))
    return cfg
