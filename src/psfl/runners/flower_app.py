"""The psfl Flower app for ``flwr run`` (Flower >= 1.42): ``server_app`` and
``client_app``, named in ``pyproject.toml`` ``[tool.flwr.app.components]``.

``flwr run . <connection>`` sends this app to a SuperLink; the SuperLink's ServerApp
process builds the psfl :class:`~psfl.config.RunConfig` from the Flower run config
(``context.run_config``: the ``[tool.flwr.app.config]`` defaults fused with
``--run-config`` overrides) and runs it with :func:`psfl.runners.flower.make_server_app`;
the SuperNodes run :func:`psfl.runners.flower.make_client_app`. Only the mapping of
run-config keys onto psfl's config lives here.

Run-config keys, applied in this order (later wins):

* ``config``: a psfl TOML config file ("" = psfl's defaults);
* every other key that names a psfl config field (``rounds``, ``method``,
  ``data.num_clients``, ``train.lr``, ...): that field; ``""`` means "not set" (the
  value of the file, or psfl's default), so the app's defaults never mask the file;
* ``set``: more ``section.field=value`` overrides (TOML values), ``;``-separated, for
  fields the app does not declare (Flower accepts only declared keys);

and, about the run rather than the config: ``out`` (the run folder, "" =
``runs/flower-<run id>``), ``resume``, ``device`` (the server's), ``timeout-s``.
Paths are read on the SuperLink host; relative ones from the SuperLink's directory.
A key that is neither raises :class:`~psfl.utils.errors.PsflError` naming it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from psfl.config import RunConfig, load_config
from psfl.utils.errors import PsflError
from psfl.runners.flower import ServerRun, make_client_app, make_server_app

UNSET = ""  # a run-config value that leaves the psfl field alone
RUN_KEYS = ("config", "out", "resume", "device", "timeout-s", "set")  # not psfl config fields


def config_fields(obj: Any = None, prefix: str = "") -> set[str]:
    """The dotted names of psfl's config fields (``rounds``, ``data.num_clients``, ...)."""
    obj = RunConfig() if obj is None else obj
    out: set[str] = set()
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            out |= config_fields(value, f"{prefix}{f.name}.")
        else:
            out.add(f"{prefix}{f.name}")
    return out


def _is_field(key: str, known: set[str]) -> bool:
    """``key`` names a psfl field, or an entry of a table field (``method_options.stc.k``)."""
    return key in known or any(key.startswith(f"{t}.") for t in ("method_options", "model.mentor_init"))


def _toml_literal(value: Any) -> str:
    """A Flower run-config value (bool, int, float or str) as the TOML literal psfl's
    ``section.field=value`` overrides read."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    return json.dumps(str(value))  # a TOML basic string


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """psfl overrides (``section.field=value``) from the run config's field keys (those
    not ``""``, in name order) then its ``set`` items; an unknown key raises."""
    known = config_fields()
    out: list[str] = []
    for key in sorted(run_config):
        if key in RUN_KEYS:
            continue
        if not _is_field(key, known):
            raise PsflError(f"run config key {key!r}: not a psfl config field nor one of "
                            f"{', '.join(RUN_KEYS)} (see [tool.flwr.app.config] in pyproject.toml)")
        if run_config[key] != UNSET:
            out.append(f"{key}={_toml_literal(run_config[key])}")
    return out + [item.strip() for item in str(run_config.get("set", UNSET)).split(";") if item.strip()]


def _flag(run_config: Mapping[str, Any], key: str) -> bool:
    """A true/false run-config key (``--run-config`` may also give it as a string)."""
    value = run_config.get(key, False)
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise PsflError(f"run config key {key!r}: expected true or false, got {value!r}")


def server_run(run_config: Mapping[str, Any], run_id: int) -> ServerRun:
    """The psfl run a Flower run config asks for (``run_id`` names the default folder)."""
    config = str(run_config.get("config", UNSET))
    cfg = load_config(config or None, overrides_from_run_config(run_config))
    out = str(run_config.get("out", UNSET)) or f"runs/flower-{run_id}"
    try:
        timeout_s = float(run_config.get("timeout-s", 600.0))
    except (TypeError, ValueError):
        timeout_s = math.nan
    if not timeout_s > 0:
        raise PsflError(f"run config key 'timeout-s': must be a number of seconds > 0, "
                        f"got {run_config.get('timeout-s')!r}")
    command = ["flwr run", f"run-id={run_id}", *(f"{k}={run_config[k]!r}" for k in sorted(run_config))]
    return ServerRun(cfg, Path(out).expanduser().resolve(), resume=_flag(run_config, "resume"),
                     device=str(run_config.get("device", "cpu")), timeout_s=timeout_s, command=command)


def _server_run_from_context(context: Any) -> ServerRun:
    """Called by the ServerApp when the run starts: Flower's ``Context`` has the fused run config."""
    return server_run(context.run_config, int(context.run_id))


server_app = make_server_app(_server_run_from_context)
client_app = make_client_app()
