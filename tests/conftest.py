"""Shared test setup: thread budget of parallel workers.

``make test`` runs the suite on pytest-xdist workers (``-n 2`` on the 2-core reference
machine). Each worker then gets ``cpus // workers`` torch threads (at most the
``OMP_NUM_THREADS`` it was given), and so do the subprocesses that tests start, so that
the workers do not oversubscribe the cores. Runs set ``threads`` from their config and
torch keeps it process-wide, so the budget is set again before every test.
"""
from __future__ import annotations

import os

import pytest
import torch


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


@pytest.fixture(autouse=True)
def _thread_budget():
    if _THREADS is not None:
        torch.set_num_threads(_THREADS)
    yield
