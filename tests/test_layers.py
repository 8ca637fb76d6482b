"""The layering a newcomer can draw: core -> methods -> runners -> CLI. No import,
top-level or inside a function, runs upward, and no import cycle exists (a package's
``__init__`` importing its own submodules to re-export them is not counted as a cycle).

    core     psfl.{config, channel, models, data, losses, optim, fl, codecs, evaluate, train, pretrain, ...}
    methods  psfl.methods.*
    runners  psfl.runners.*, psfl.compare, psfl.report, psfl.seeds, psfl.experiments, psfl.figures, psfl.claims
    cli      psfl.cli.*, psfl.__main__
"""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ("core", "methods", "runners", "cli")
RUNNER_MODULES = ("psfl.compare", "psfl.report", "psfl.seeds", "psfl.experiments", "psfl.figures", "psfl.claims")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def layer(module: str) -> int:
    if module.startswith("psfl.cli") or module == "psfl.__main__":
        return 3
    if module.startswith("psfl.runners") or module in RUNNER_MODULES:
        return 2
    if module.startswith("psfl.methods"):
        return 1
    return 0


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


def test_no_import_runs_upward():
    upward = sorted(f"{a} ({LAYERS[layer(a)]}) imports {b} ({LAYERS[layer(b)]})"
                    for a, bs in GRAPH.items() for b in bs if layer(b) > layer(a))
    assert not upward, "\n".join(upward)


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
