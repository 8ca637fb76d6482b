"""Methods as plugins: a package installed elsewhere registers a method through the entry
point group ``psfl.methods`` and runs from the CLI like a built-in one. The installed
package is simulated without pip: a module and a ``*.dist-info`` folder on sys.path."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from psfl.cli import main
from psfl.utils.errors import PsflError
from psfl.methods import METHODS
from psfl.methods.plugins import load_method_plugins

from test_runner import tiny_overrides

MYAVG = '''
    """A FedAvg under another name with one extra option (a test plugin)."""
    from __future__ import annotations

    from dataclasses import dataclass

    from psfl.methods.single import FedAvg


    @dataclass
    class MyAvgOptions(FedAvg.Options):
        note: str = "plain"


    class MyAvg(FedAvg):
        """FedAvg, installed as a plugin."""

        Options = MyAvgOptions
        seen: list = []

        def __init__(self, env, options=None, cfg=None):
            super().__init__(env, options, cfg)
            MyAvg.seen.append(self.options.note)
'''


def make_dist(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """An 'installed' distribution under ``root``: modules plus ``<dist>-0.1.dist-info``."""
    for rel, src in modules.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[psfl.methods]\n" + textwrap.dedent(entry_points))


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    """A fresh sys.path entry; afterwards the method registry and sys.modules are as before."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = dict(METHODS._items)
    yield root
    METHODS._items.clear()
    METHODS._items.update(before)
    for name in [m for m in sys.modules if m.split(".")[0] in ("mypkg", "badpkg")]:
        del sys.modules[name]


def _myavg(root: Path, name: str = "myavg") -> None:
    make_dist(root, "mypkg", f"{name} = mypkg.mod:MyAvg\n", {"mypkg/__init__.py": "", "mypkg/mod.py": MYAVG})


def test_plugin_runs_from_the_cli_like_a_builtin(plugin_root, tmp_path, cache, capsys):
    _myavg(plugin_root)
    assert load_method_plugins() == ["myavg"]
    assert load_method_plugins() == []  # idempotent
    cls = METHODS.get("myavg")
    assert cls.name == "myavg" and cls.__module__ == "mypkg.mod"
    over = tiny_overrides(cache, rounds=2, method="myavg") + ['method_options.myavg.note="hello"']
    argv = ["run", "--no-progress", "--no-plots", "--out", str(tmp_path / "r")]
    for o in over:
        argv += ["--set", o]
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    assert all(c["upload_bits"] > 0 for r in records for c in r["clients"])
    assert cls.seen == ["hello"]  # the typed option reached the method
    assert 'note = "hello"' in (tmp_path / "r" / "config.toml").read_text()

    # a typo in its options exits 2 naming the field, before any work
    argv = ["run", "--no-progress", "--out", str(tmp_path / "typo"), "--set", 'method="myavg"',
            "--set", 'method_options.myavg.noet="x"']
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "method_options.myavg.noet" in err and "Traceback" not in err
    assert not (tmp_path / "typo").exists()


def test_plugin_in_compare_and_methods(plugin_root, tmp_path, cache, capsys):
    _myavg(plugin_root)
    load_method_plugins()
    over = tiny_overrides(cache, rounds=1, method="myavg")
    argv = ["compare", "--no-progress", "--methods", "myavg", "--out", str(tmp_path / "c")]
    for o in over:
        argv += ["--set", o]
    assert main(argv) == 0, capsys.readouterr().err
    assert [r["method"] for r in json.loads((tmp_path / "c" / "summary.json").read_text())] == ["myavg"]
    capsys.readouterr()
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["myavg"]["summary"] == "FedAvg, installed as a plugin."
    assert {"name": "note", "type": "str", "default": "plain"} in rows["myavg"]["options"]


def test_broken_entry_point_is_a_psfl_error_naming_it(plugin_root):
    make_dist(plugin_root, "badpkg", "ghost = missing_module.sub:Ghost\n", {})
    with pytest.raises(PsflError, match=r"entry point 'ghost' .*missing_module.*ModuleNotFoundError") as e:
        load_method_plugins()
    assert "badpkg" in str(e.value)


def test_broken_plugin_at_the_cli_is_one_line_exit_2(plugin_root):
    make_dist(plugin_root, "badpkg", "ghost = missing_module.sub:Ghost\n", {})
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_root), src]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "psfl", "methods"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "entry point 'ghost'" in proc.stderr
    assert proc.stderr.startswith("psfl methods: error: broken method plugin(s)")


BAD = {
    "notamethod": ("class NotAMethod:\n    pass\n", "not a subclass"),
    "abstract": ("from psfl.methods.base import FederatedMethod\n"
                 "class Half(FederatedMethod):\n    def init_server(self): ...\n", "does not implement"),
    "plainopts": ("from psfl.methods.single import FedAvg\n"
                  "class Opt:\n    x = 1\n"
                  "class P(FedAvg):\n    Options = Opt\n", "must be a dataclass"),
    "nodefault": ("from dataclasses import dataclass\nfrom psfl.methods.base import MethodOptions\n"
                  "from psfl.methods.single import FedAvg\n"
                  "@dataclass\nclass Opt(MethodOptions):\n    x: int\n"
                  "class P(FedAvg):\n    Options = Opt\n", "needs a default"),
    "wrongname": ("from psfl.methods.single import FedAvg\n"
                  "class P(FedAvg):\n    name = 'other'\n", "set it to the entry point's name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_plugin_checks(plugin_root, case):
    src, match = BAD[case]
    cls = {"notamethod": "NotAMethod", "abstract": "Half"}.get(case, "P")
    make_dist(plugin_root, "badpkg", f"{case} = badpkg.m:{cls}\n", {"badpkg/__init__.py": "", "badpkg/m.py": src})
    with pytest.raises(PsflError, match=match):
        load_method_plugins()
    assert case not in METHODS


def test_plugin_cannot_take_a_builtin_name(plugin_root):
    _myavg(plugin_root, name="fedavg")
    with pytest.raises(PsflError, match="'fedavg' is taken by psfl.methods.single.FedAvg"):
        load_method_plugins()
    assert METHODS.get("fedavg").__module__ == "psfl.methods.single"


# ---------------------------------------------------------------------------- psfl methods
def test_methods_lists_every_method_with_its_options(capsys):
    import dataclasses

    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == METHODS.names()
    for name, row in rows.items():  # every registered method, every option field
        fields = dataclasses.fields(METHODS.get(name).Options)
        assert [(o["name"], o["default"]) for o in row["options"]] == [(f.name, f.default) for f in fields], name
        assert row["origin"] == "built-in"
    opts = {n: {o["name"]: (o["type"], o["default"]) for o in r["options"]} for n, r in rows.items()}
    assert opts["stc"]["p"] == ("float", 0.01)
    assert opts["fedpaq"]["s"] == ("int", 16) and opts["fedpaq"]["participation"] == ("float", 0.5)
    assert opts["psfl"]["distill"] == ("bool", True) and opts["fedavg"]["model"] == ("str", "M")
    assert rows["fedavg"]["summary"].startswith("FedAvg (McMahan et al.)")

    assert main(["methods", "fed*"]) == 0
    text = capsys.readouterr().out
    assert "method_options.fedpaq.participation: float = 0.5" in text and "stc" not in text.split("set an")[0]
