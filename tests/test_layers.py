"""The layering a newcomer can draw, stated as packages: a module's folder places it.

    core         psfl.utils < psfl.channel < psfl.models < psfl.data, psfl.codecs < psfl.evaluate
                 < psfl.training < psfl.fl < psfl.config < psfl.central
    methods      psfl.methods
    runners      psfl.runners
    experiments  psfl.experiments
    cli          psfl.cli, psfl.__main__

No import, top-level or inside a function, runs upward (inside the core, a package imports
only packages of a lower rank), no import cycle exists (a package's ``__init__`` importing
its own submodules to re-export them is not counted as a cycle), every module lives in one
of these packages, and the README's layout block lists exactly this tree.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# (layer, ranks of packages lowest first; packages of one rank may not import each other)
LAYERS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("core", (("psfl.utils",), ("psfl.channel",), ("psfl.models",), ("psfl.data", "psfl.codecs"),
              ("psfl.evaluate",), ("psfl.training",), ("psfl.fl",), ("psfl.config",), ("psfl.central",))),
    ("methods", (("psfl.methods",),)),
    ("runners", (("psfl.runners",),)),
    ("experiments", (("psfl.experiments",),)),
    ("cli", (("psfl.cli", "psfl.__main__"),)),
)
RANK = {pkg: (li, ri) for li, (_, ranks) in enumerate(LAYERS) for ri, pkgs in enumerate(ranks) for pkg in pkgs}
RANK["psfl"] = (-1, 0)  # the package root holds __version__ only


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def package(module: str) -> str:
    """The layer package of a module: ``psfl.fl.pld`` -> ``psfl.fl``."""
    return ".".join(module.split(".")[:2])


def rank(module: str) -> tuple[int, int]:
    return RANK[package(module)]


def layer(module: str) -> int:
    return rank(module)[0]


def imports_of(path: Path) -> set[str]:
    """Every psfl module imported anywhere in ``path`` (top level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute psfl.* imports)"
            if node.module:
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m in MODULES}


GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def test_every_module_lives_in_a_layer_package():
    loose = sorted(m for m in MODULES if package(m) not in RANK)
    assert not loose, f"place these in a layer's package (or add the package to LAYERS): {loose}"


def test_no_import_runs_upward():
    upward = sorted(f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
                    for a, bs in GRAPH.items() for b in bs if layer(b) > layer(a))
    assert not upward, "\n".join(upward)


def test_core_packages_import_only_lower_ranks():
    """Inside the core the packages stack too: utils at the bottom, central training on top."""
    bad = sorted(f"{a} imports {b}" for a, bs in GRAPH.items() for b in bs
                 if layer(a) == layer(b) == 0 and package(a) != package(b) and package(b) != "psfl"
                 and rank(b) >= rank(a))
    assert not bad, "\n".join(bad)


def readme_layout() -> dict[str, dict[str, set[str]]]:
    """The README's layout block: {layer: {entry: modules named on its lines}}."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```text\nsrc/psfl/\n(.*?)```", text, re.S)
    assert block, "README: no ```text block starting with src/psfl/"
    out: dict[str, dict[str, set[str]]] = {}
    entry = ""
    for line in block.group(1).splitlines():
        if m := re.match(r"(\w+)\s", line + " "):  # a layer heading at column 0
            current = out.setdefault(m.group(1), {})
            continue
        if m := re.match(r"  (\w+/|\w+\.py)(\s|$)", line):
            entry = m.group(1)
            current[entry] = set()
            line = line[m.end():]
        current[entry] |= set(re.findall(r"\b(\w+\.py)\b", line))
    return out


def test_readme_layout_block_matches_the_tree():
    readme = readme_layout()
    assert list(readme) == [name for name, _ in LAYERS], "README layers differ from LAYERS"
    for name, ranks in LAYERS:
        entries = [e[:-1] if e.endswith("/") else e[:-3] for e in readme[name]]
        assert entries == [p.removeprefix("psfl.") for pkgs in ranks for p in pkgs], \
            f"README {name}: {entries} (in rank order)"
    for name, entries in readme.items():
        for entry, listed in entries.items():
            if entry.endswith("/"):
                files = {p.name for p in (SRC / "psfl" / entry).glob("*.py")} - {"__init__.py"}
                assert listed == files, f"README {entry}: lists {sorted(listed)}, the tree has {sorted(files)}"
            else:
                assert (SRC / "psfl" / entry).is_file() and not listed - {entry}, entry
    tops = {p.name + ("/" if p.is_dir() else "") for p in (SRC / "psfl").iterdir()
            if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())} - {"__init__.py"}
    assert tops == {e for entries in readme.values() for e in entries}


def test_layer_packages_say_what_they_may_import():
    """Each layer package's ``__init__`` opens with a docstring naming its layer's imports."""
    for pkg in RANK:
        path = SRC / pkg.replace(".", "/") / "__init__.py"
        if pkg == "psfl" or not path.exists():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "import" in doc, f"{path}: the docstring does not say what the package may import"


def test_no_import_cycle():
    graph = {a: {b for b in bs if b != a and not b.startswith(a + ".")} for a, bs in GRAPH.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path + [m, n]
            if n not in state and (cycle := visit(n, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_the_checker_sees_function_level_imports(tmp_path):
    """The graph includes imports inside functions (the upward ones hid there)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from psfl.methods import METHODS\n    return METHODS\n")
    assert "psfl.methods" in imports_of(f)


def test_cli_help_does_not_import_torch():
    """`psfl --help` and every subcommand's --help answer without importing torch (the
    import alone takes seconds): parsers read no torch-backed module."""
    import subprocess
    import sys

    code = ("import sys, psfl.cli as c\n"
            "p = c.build_parser()\n"
            "sub = next(a for a in p._actions if a.dest == 'command')\n"
            "helps = [sub.choices[name].format_help() for name in c.COMMANDS]\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'matplotlib'))\n"
            "print(len(c.COMMANDS), heavy[:5])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) >= 10 and out[1].strip() == "[]"
