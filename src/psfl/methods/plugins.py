"""Methods from other installed packages, found through the entry point group
``psfl.methods``. A package declares its methods in its ``pyproject.toml``::

    [project.entry-points."psfl.methods"]
    fedfoo = "mypkg.methods:FedFoo"

Each entry point loads a concrete :class:`~psfl.methods.base.FederatedMethod` subclass
whose ``Options`` is a dataclass with a default for every field. The entry point's name
is the method's name: in :data:`~psfl.methods.base.METHODS`, in ``method = "fedfoo"``,
``method_options.fedfoo.<field>``, ``psfl run``, ``psfl compare`` and ``psfl methods``,
exactly like a built-in method. Importing :mod:`psfl.methods` loads the plugins once.

:func:`method_table` describes every registered method, built-in or plugin, with its
options, types and defaults (``psfl methods``).
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from psfl.utils.errors import PsflError
from psfl.methods.base import METHODS, FederatedMethod

GROUP = "psfl.methods"
_loaded = False
_origin: dict[str, str] = {}  # plugin method name -> where it comes from


def loaded() -> bool:
    """Whether :func:`load_method_plugins` has completed once in this process."""
    return _loaded


def load_method_plugins() -> list[str]:
    """Register every method of the ``psfl.methods`` entry point group in ``METHODS``
    (names already registered with the same class are skipped); returns the names
    registered by this call. Broken plugins raise one :class:`PsflError` naming each
    entry point and its error; the well-formed ones are registered all the same."""
    global _loaded
    added: list[str] = []
    problems: list[str] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            cls = _load(ep)
        except PsflError as e:
            problems.append(str(e))
            continue
        if ep.name in METHODS:
            if METHODS.get(ep.name) is not cls:
                other = METHODS.get(ep.name)
                problems.append(f"{_where(ep)}: the name {ep.name!r} is taken by "
                                f"{other.__module__}.{other.__qualname__}")
            continue
        cls.name = ep.name  # the entry point names the method (options_for(cls.name) reads its table)
        METHODS.register(ep.name)(cls)
        _origin[ep.name] = _where(ep)
        added.append(ep.name)
    if problems:
        raise PsflError("broken method plugin(s): " + "; ".join(problems))
    _loaded = True
    return added


def _where(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    pkg = f" from package {dist.metadata['Name']!r}" if dist is not None else ""
    return f"entry point {ep.name!r} ({ep.group}: {ep.name} = {ep.value}){pkg}"


def _load(ep: EntryPoint) -> type[FederatedMethod]:
    """The class behind ``ep``, checked; a :class:`PsflError` naming ``ep`` otherwise."""
    try:
        obj = ep.load()
    except Exception as e:  # a plugin's import may fail in any way; say which and why
        raise PsflError(f"{_where(ep)}: {type(e).__name__}: {e}") from None
    if not (inspect.isclass(obj) and issubclass(obj, FederatedMethod)):
        raise PsflError(f"{_where(ep)}: {obj!r} is not a subclass of psfl.methods.FederatedMethod")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise PsflError(f"{_where(ep)}: {obj.__qualname__} does not implement {missing}")
    declared = obj.__dict__.get("name")
    if declared and declared != ep.name:
        raise PsflError(f"{_where(ep)}: {obj.__qualname__}.name is {declared!r}; leave it out or set it to "
                        f"the entry point's name {ep.name!r}")
    opts = obj.Options
    if not (inspect.isclass(opts) and dataclasses.is_dataclass(opts)):
        raise PsflError(f"{_where(ep)}: {obj.__qualname__}.Options must be a dataclass (subclass "
                        "psfl.methods.base.MethodOptions)")
    try:
        opts()
    except Exception as e:
        raise PsflError(f"{_where(ep)}: {obj.__qualname__}.Options() failed ({type(e).__name__}: {e}); every "
                        "option needs a default") from None
    return obj


def method_table(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered method matching ``pattern``: name, class, origin ("built-in"
    or the plugin's entry point), the first line of the class's own docstring and its
    options (name, type, default) from the ``Options`` dataclass."""
    rows = []
    for name in METHODS.names(pattern):
        cls = METHODS.get(name)
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        rows.append({"name": name, "class": f"{cls.__module__}.{cls.__qualname__}",
                     "origin": _origin.get(name, "built-in"), "summary": doc.split("\n\n")[0].replace("\n", " "),
                     "options": option_rows(cls.Options)})
    return rows


def option_rows(options: type) -> list[dict[str, Any]]:
    """Fields of an options dataclass: name, type (as written) and default."""
    try:
        hints = typing.get_type_hints(options)
    except Exception:  # an annotation that does not resolve: show it as written
        hints = {}
    rows = []
    for f in dataclasses.fields(options):
        t = hints.get(f.name, f.type)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append({"name": f.name, "type": t.__name__ if isinstance(t, type) else str(t).replace("typing.", ""),
                     "default": default})
    return rows
