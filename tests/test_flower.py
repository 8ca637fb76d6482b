"""The Flower engine (psfl.runners.flower): same config and seed, same metrics as the
in-process runner; the Flower layer only carries bytes."""
import json

import pytest

from psfl.config import load_config
from psfl.runners.inprocess import run_federated

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from psfl.runners.flower import run_simulation  # noqa: E402

from test_runner import cache, strip_timing, tiny_overrides  # noqa: E402,F401


def _strip(records):
    return json.loads(json.dumps(strip_timing(records)))


@pytest.mark.parametrize("method", ["psfl", pytest.param("stc", marks=pytest.mark.slow),
                                    pytest.param("fedpaq", marks=pytest.mark.slow)])
def test_flower_simulation_equals_in_process(tmp_path, cache, method):  # noqa: F811
    """The order of operations is the same (clients sorted by id before the energy and
    aggregation sums), so the per-round metrics are equal exactly, not within a tolerance."""
    cfg = load_config(None, tiny_overrides(cache, rounds=2, method=method))
    ref = run_federated(cfg, tmp_path / "inprocess", progress=False).records
    got = run_simulation(cfg, tmp_path / "flower").records
    assert _strip(got) == _strip(ref)
    assert (tmp_path / "flower" / "metrics.jsonl").is_file() and (tmp_path / "flower" / "provenance.json").is_file()


@pytest.mark.slow  # three Flower simulations
def test_flower_resume_continues_from_node_state(tmp_path, cache):  # noqa: F811
    """One round on Flower, then a resumed second round (a new simulation: the nodes'
    contexts are empty and their states come from <run>/nodes/) equals two rounds in
    process: the mentors carried over."""
    ref = run_federated(load_config(None, tiny_overrides(cache, rounds=2)), tmp_path / "ref", progress=False).records
    run_simulation(load_config(None, tiny_overrides(cache, rounds=1)), tmp_path / "fl")
    assert len(list((tmp_path / "fl" / "nodes").glob("*/client*.pt"))) == 3
    got = run_simulation(load_config(None, tiny_overrides(cache, rounds=2)), tmp_path / "fl", resume=True).records
    assert _strip(got) == _strip(ref)
