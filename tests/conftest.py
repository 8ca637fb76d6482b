"""Shared test setup: thread budget of parallel workers.

``make test`` runs the suite on pytest-xdist workers (``-n 2`` on the 2-core reference
machine). Each worker then gets ``cpus // workers`` torch threads (at most the
``OMP_NUM_THREADS`` it was given), and so do the subprocesses that tests start, so that
the workers do not oversubscribe the cores. Runs set ``threads`` from their config and
torch keeps it process-wide, so the budget is set again before every test.

The evaluator cache (``cache``) is one folder for the whole session, shared by the
workers: the tiny runs' two classifiers are trained once (under a file lock), not once
per test module and worker.

Scheduling (``make test``: ``-n 3 --dist loadgroup`` on 2 cores). The Flower tests (Ray
simulations and the deployed SuperLink/SuperNodes) are one ``xdist_group("flower")``: one
federation at a time, on one worker, handed out first (xdist sorts the scopes by their
number of tests). They mostly wait (process starts, Flower's 3-s polls, the faults test's
timeout), so the other two workers keep both cores busy meanwhile; with two workers a
waiting worker left its core idle (72 % of two cores busy, measured). The single tests
follow in collection order: ``pytest_collection_modifyitems`` puts the long ones first
(``LONG_FIRST``), so that no worker ends the suite alone on a 30-s test, and tags the
groups itself where xdist's tag does not take (``_tag_xdist_groups``: with pytest 9.2 and
xdist 3.8 every group was inert, and the Flower tests ran on all workers at once).
Measured quiet on the AMD kind (2026-12-07): 6.3 min with 2 workers, 5.5 with 3 and the
groups inert, 5.0-5.2 (two runs) with 3 and the groups acting (the Flower group took
0-214 s on one worker, and the three workers ended within 1 s of each other).
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (read when torch's OpenMP runtime loads,
# so before `import torch`; subprocesses inherit it). A run with more threads than free
# cores (the sweep's `threads = 2` beside a busy worker) otherwise spins: measured 40 s
# against 4.5 s for one tiny round with the other core busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from filelock import FileLock


def _worker_threads() -> int | None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None  # plain `pytest`: torch's own default (or OMP_NUM_THREADS)
    share = max(1, (os.cpu_count() or 1) // int(workers))
    given = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(given)) if given.isdigit() and int(given) > 0 else share


_THREADS = _worker_threads()
if _THREADS is not None:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)


# Tests of 5-40 s each (measured), longest first; the rest keep their collection order.
LONG_FIRST = (
    "test_provenance.py::test_every_config_field_is_honoured_or_rejected[psfl-evaluator]",
    "test_reproduce.py::test_reproduce_all_tiny_runs_resumes_and_draws",
    "test_learning.py::test_tiny_federated_run_learns",
    "test_crash.py::test_sigkill_then_resume_matches_an_uninterrupted_run",
    "test_provenance.py::test_every_config_field_is_honoured_or_rejected",
    "test_methods.py::test_tiny_compare_cli",
    "test_store.py::test_second_writer_is_refused_while_the_first_runs",
    "test_fedkd.py::test_server_and_clients_stay_in_sync_and_bits_follow_the_threshold",
    "test_tune.py::",
    "test_screen.py::test_hostile_uploads_are_rejected_and_logged",
    "test_plugins.py::test_broken_plugin_at_the_cli_is_one_line_exit_2",
    "test_device.py::test_psfl_train_device_cuda_subprocess",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, p in enumerate(LONG_FIRST) if p in item.nodeid), len(LONG_FIRST))

    items.sort(key=rank)  # stable: ties keep the collection order
    if getattr(config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup
        _tag_xdist_groups(items)


def _tag_xdist_groups(items) -> None:
    """The ``@group`` suffix of ``--dist loadgroup``, where xdist's own did not take:
    pytest-xdist 3.8 assigns ``item._nodeid``, which pytest 9.2 no longer reads
    (``Node.nodeid`` is ``str(item._id)``), so its groups were inert. With a pytest whose
    nodeid xdist can set (the suffix is there), or without ``_pytest.nodeid``, nothing
    changes."""
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")


@pytest.fixture(autouse=True)
def _thread_budget():
    if _THREADS is not None:
        torch.set_num_threads(_THREADS)
    yield


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The session's evaluator cache (``evaluator.cache_dir`` of ``tiny_overrides``), with
    the two classifiers of a tiny run on the bundled Fashion-MNIST sample already in it.
    Tests only add to it (evaluators are written atomically, keyed by every setting that
    changes their weights), so sharing it changes no test's outcome."""
    from psfl.config import RunConfig
    from psfl.evaluate import load_evaluator

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base temps are siblings under the session's
    path = root / "psfl-evaluator-cache"
    with FileLock(str(root / "psfl-evaluator-cache.lock")):
        ready = path / ".ready"
        if not ready.is_file():
            ev = RunConfig().evaluator
            for arch, seed in ((ev.arch, ev.seed), (ev.score_arch, ev.score_seed)):
                load_evaluator("fashion_mnist", arch=arch, epochs=1, seed=seed, cache_dir=path, progress=False)
            ready.touch()
    return path


@pytest.fixture(scope="session")
def reference_run(cache, tmp_path_factory):
    """``reference_run(rounds, copy_to=None)``: the overrides and records of an uninterrupted
    tiny PSFL run of ``rounds`` rounds (``tiny_overrides``), made once per session (under a
    file lock, beside the evaluator cache: the workers share it): the run that a killed,
    damaged or resumed run must equal. Its records are read back from its metrics.jsonl,
    as a resumed run reads its earlier rounds. ``copy_to``: a copy of its run folder there,
    to damage or resume (the shared folder itself is never written after it is made)."""
    import shutil

    from psfl.config import load_config
    from psfl.runners.inprocess import run_federated
    from psfl.runners.store import read_records
    from test_runner import tiny_overrides

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent

    def get(rounds: int, copy_to=None) -> tuple[list[str], list[dict]]:
        over = tiny_overrides(cache, rounds=rounds)
        out = root / "psfl-reference-runs" / f"rounds{rounds}"
        with FileLock(str(out) + ".lock"):
            if not (out / ".ready").is_file():
                shutil.rmtree(out, ignore_errors=True)
                run_federated(load_config(None, over), out / "run", progress=False)
                (out / ".ready").touch()
        if copy_to is not None:
            shutil.copytree(out / "run", copy_to)
        return list(over), read_records(out / "run" / "metrics.jsonl")

    return get
