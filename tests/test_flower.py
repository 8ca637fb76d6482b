"""The Flower engine (psfl.runners.flower): same config and seed, same metrics as the
in-process runner; the Flower layer only carries bytes."""
import json

import pytest

from psfl.config import load_config
from psfl.runners.inprocess import run_federated
from psfl.runners.store import read_records

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from psfl.runners import flower  # noqa: E402
from psfl.runners.flower import run_simulation  # noqa: E402

from test_runner import strip_timing, tiny_overrides  # noqa: E402

# one Flower federation at a time, on one worker (make test: --dist loadgroup; tests/conftest.py)
pytestmark = pytest.mark.xdist_group("flower")


def _strip(records):
    return json.loads(json.dumps(strip_timing(records)))


DP = ["privacy.clip=1.0", "privacy.noise_multiplier=0.5"]  # client-level DP: the noise is drawn on the client


# plain PSFL (`make test-all`): the DP case runs the same path with the noise added
@pytest.mark.parametrize("method,extra", [pytest.param("psfl", [], marks=pytest.mark.slow), ("psfl", DP),
                                          pytest.param("stc", [], marks=pytest.mark.slow),
                                          pytest.param("fedpaq", [], marks=pytest.mark.slow)])
def test_flower_simulation_equals_in_process(tmp_path, cache, method, extra):
    """The order of operations is the same (clients sorted by id before the energy and
    aggregation sums), so the per-round metrics are equal exactly, not within a tolerance;
    with differential privacy too (each client's noise comes from its seeded generator),
    epsilon included."""
    cfg = load_config(None, tiny_overrides(cache, rounds=2, method=method) + extra)
    ref = run_federated(cfg, tmp_path / "inprocess", progress=False).records
    got = run_simulation(cfg, tmp_path / "flower").records
    assert _strip(got) == _strip(ref)
    assert all(("dp_epsilon" in r) == bool(extra) for r in got)
    assert (tmp_path / "flower" / "metrics.jsonl").is_file() and (tmp_path / "flower" / "provenance.json").is_file()


def test_compare_on_flower_equals_compare_in_process(tmp_path, cache):
    """`psfl compare --engine flower`: every method a Flower simulation, the comparison's
    per-round metrics and table equal the in-process comparison's (PSFL's config given to
    fedavg-csc, which ignores PSFL's settings: the non-strict path). One method: PSFL on
    Flower against in process is the test above, and each method here is one more Ray
    simulation (about 30 s)."""
    from psfl.cli import main

    args = ["compare", "--methods", "fedavg-csc", "--no-progress"]
    for o in tiny_overrides(cache, rounds=1):
        args += ["--set", o]
    assert main(args + ["--out", str(tmp_path / "inprocess")]) == 0
    assert main(args + ["--out", str(tmp_path / "flower"), "--engine", "flower"]) == 0
    for m in ("fedavg-csc",):
        ref, got = (read_records(tmp_path / e / m / "metrics.jsonl") for e in ("inprocess", "flower"))
        assert _strip(got) == _strip(ref), m
    assert (tmp_path / "flower" / "summary.md").is_file()


@pytest.mark.slow  # three Flower simulations
def test_flower_resume_continues_from_node_state(tmp_path, cache):
    """One round on Flower, then a resumed second round (a new simulation: the nodes'
    contexts are empty and their states come from <run>/nodes/) equals two rounds in
    process: the mentors carried over."""
    ref = run_federated(load_config(None, tiny_overrides(cache, rounds=2)), tmp_path / "ref", progress=False).records
    run_simulation(load_config(None, tiny_overrides(cache, rounds=1)), tmp_path / "fl")
    assert len(list((tmp_path / "fl" / "nodes").glob("*/client*.pt"))) == 3
    got = run_simulation(load_config(None, tiny_overrides(cache, rounds=2)), tmp_path / "fl", resume=True).records
    assert _strip(got) == _strip(ref)


# --------------------------------------------------------------------------- `flwr run .`: the app
def test_pyproject_declares_a_valid_flower_app():
    """``flwr run .`` reads [tool.flwr.app]: flwr's own validator accepts it (the
    components import), and its run-config defaults make psfl's default run."""
    import tomllib
    from pathlib import Path

    from flwr.common.config import flatten_dict, validate_config

    from psfl.config import dump_config
    from psfl.runners.flower_app import server_run

    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(pyproject, check_module=True, project_dir=root)
    assert ok, errors
    defaults = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    run = server_run(defaults, run_id=7)
    assert dump_config(run.cfg) == dump_config(load_config(None, []))
    assert run.run_dir.name == "flower-7" and not run.resume and run.device == "cpu"


def test_run_config_maps_onto_psfl_config(tmp_path):
    """Precedence: psfl defaults <- `config` file <- dotted keys <- `set`; "" leaves a field alone."""
    from psfl.runners.flower_app import server_run

    toml = tmp_path / "c.toml"
    toml.write_text('rounds = 7\nmethod = "stc"\n[train]\nlr = 0.03\n')
    run = server_run({"config": str(toml), "rounds": 2, "method": "", "data.num_clients": 4,
                      "model.family": "tiny", "set": "train.batch_size=8; channel.name='rayleigh'",
                      "out": str(tmp_path / "run"), "resume": True, "timeout-s": 30.0}, run_id=1)
    cfg = run.cfg
    assert (cfg.rounds, cfg.method, cfg.train.lr, cfg.data.num_clients) == (2, "stc", 0.03, 4)
    assert (cfg.model.family, cfg.train.batch_size, cfg.channel.name) == ("tiny", 8, "rayleigh")
    assert run.run_dir == tmp_path / "run" and run.resume and run.timeout_s == 30.0


@pytest.mark.parametrize("run_config, message", [
    ({"rounds": 2, "roundz": 3}, "run config key 'roundz'"),
    ({"data.num_client": 2}, "run config key 'data.num_client'"),
    ({"resume": "maybe"}, "run config key 'resume'"),
    ({"timeout-s": 0.0}, "run config key 'timeout-s'"),
    ({"rounds": "many"}, "config field rounds"),
    ({"set": "train.nope=1"}, "unknown config field 'train.nope'"),
])
def test_run_config_errors_name_the_key(run_config, message):
    import re

    from psfl.utils.errors import PsflError
    from psfl.runners.flower_app import server_run

    with pytest.raises(PsflError, match=re.escape(message)):
        server_run(run_config, run_id=1)


def test_only_the_first_round_waits_for_the_nodes_to_build_their_clients():
    waits = flower._RoundTimeout(5.0)
    assert [waits.next() for _ in range(3)] == [flower.NODE_START_S, 5.0, 5.0]
    assert flower._RoundTimeout(1000.0).next() == 1000.0  # a longer round timeout wins


def test_the_flower_app_loads_without_torch():
    """A deployed SuperNode starts a ClientApp process per message, and each loads the app:
    the query and three of SecAgg+'s four stages need no torch (3-4 s an import on a busy
    core), so loading the app must not import it."""
    import subprocess
    import sys

    code = ("import sys, psfl.runners.flower_app as app; assert app.client_app and app.server_app; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
