"""Failing clients on the Flower engine (issue 11 item 5, issue 12 item 1 "in each
engine"): a node whose ClientApp uploads NaN, values at pruned positions, a wrong shape,
a huge update or a truncated payload, raises, or does not answer in time does not end
the round. The server aggregates over the others and records the failure (round,
client, reason) in metrics.jsonl; the global model is the one the in-process runner gets
with that client lost every round."""
import math
import os
import time
from pathlib import Path

import pytest

from psfl.config import load_config
from psfl.runners.inprocess import run_federated

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from flwr.clientapp import ClientApp  # noqa: E402

from psfl.runners import flower  # noqa: E402

from test_runner import tiny_overrides  # noqa: E402
from test_screen import CORRUPT, REASON, hostile_executor  # noqa: E402

# one Flower federation at a time, on one worker (make test: --dist loadgroup; tests/conftest.py)
pytestmark = pytest.mark.xdist_group("flower")

TIMEOUT_S = 12.0  # a tiny round of 3 clients takes 1-2 s alone, < 5 s on 2 busy cores (round 0, in which the
# nodes build their clients, waits flower.NODE_START_S)
BAD = 1
PLAN = {0: "nan", 1: "mask-violating", 2: "wrong shape", 3: "huge", 4: "truncated", 5: "raise", 6: "late"}
REASONS = {**REASON, "raise": "the client crashed", "late": f"no reply within {TIMEOUT_S:g} s"}


def faulty_client_app(seen: Path | None = None) -> ClientApp:
    """psfl's ClientApp, except client 1: each round it misbehaves as PLAN says (a
    corrupted upload, an exception, a reply after the timeout). ``seen``: each node
    process writes its niceness there."""
    app = ClientApp()
    app.query()(flower._handle_query)

    @app.train()
    def train(msg, context):
        c = msg.content[flower.RECORD]
        if seen is not None:
            (seen / f"nice-{os.getpid()}").write_text(str(os.nice(0)))
        kind = PLAN[int(c["round"])] if int(c["cid"]) == BAD else None
        if kind == "raise":
            raise RuntimeError("the client crashed")
        reply = flower._handle_train(msg, context)
        if kind in CORRUPT:
            method = flower._client_side(str(c["config"]), None, "cpu")[2]
            reply.content[flower.RECORD]["payload"] = CORRUPT[kind](method, bytes(reply.content[flower.RECORD]["payload"]))
        if kind == "late":
            time.sleep(TIMEOUT_S + 3)  # answers, but after the server gave up on it (it waits from its send)
        return reply

    return app


def test_failing_nodes_are_recorded_and_left_out(tmp_path, cache):
    cfg = load_config(None, tiny_overrides(cache, rounds=len(PLAN)))
    lost = run_federated(cfg, tmp_path / "lost", progress=False, executor=hostile_executor(BAD, fail=True)).records
    (seen := tmp_path / "nice").mkdir()
    got = flower.run_simulation(cfg, tmp_path / "flower", timeout_s=TIMEOUT_S,
                                client_app=faulty_client_app(seen)).records
    # the simulated clients run at this process's priority, not Ray's default nice 15 (which
    # starves them, and so trips TIMEOUT_S, whenever anything else runs)
    assert {p.read_text() for p in seen.iterdir()} == {str(os.nice(0))}
    assert len(got) == len(PLAN)
    for r in got:
        kind = PLAN[r["round"]]
        assert [f["cid"] for f in r["failed"]] == [BAD], r["failed"]
        assert REASONS[kind] in r["failed"][0]["reason"], (kind, r["failed"])
        assert math.isfinite(r["global"]["loss"])
        sent = BAD in [c["cid"] for c in r["clients"]]
        assert sent == (kind in CORRUPT), kind  # a rejected upload was transmitted: its energy counts
    assert [r["global"] for r in got] == [r["global"] for r in lost]  # weights renormalised over the others
