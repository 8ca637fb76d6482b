"""Failing clients on the Flower engine (issue 11 item 5, issue 12 item 1 "in each
engine"): a node whose ClientApp raises, replies with a payload that is not an upload,
or does not answer in time does not end the round. The server aggregates over the
others and records the failure (round, client, reason) in metrics.jsonl; the global
model is the one the in-process runner gets with that client lost every round."""
import time

import pytest

from psfl.config import load_config
from psfl.runners.inprocess import run_federated

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from flwr.clientapp import ClientApp  # noqa: E402

from psfl.runners import flower  # noqa: E402

from test_runner import cache, tiny_overrides  # noqa: E402,F401
from test_screen import hostile_executor  # noqa: E402

TIMEOUT_S = 30.0  # a tiny round of 3 clients takes seconds (round 0 builds the nodes: < 15 s on 2 busy cores)
BAD = 1


def faulty_client_app() -> ClientApp:
    """psfl's ClientApp, except client 1: it sends garbage in round 0, raises in round 1
    and answers too late in round 2."""
    app = ClientApp()
    app.query()(flower._handle_query)

    @app.train()
    def train(msg, context):
        c = msg.content[flower.RECORD]
        rnd, cid = int(c["round"]), int(c["cid"])
        if cid == BAD and rnd == 1:
            raise RuntimeError("the client crashed")
        reply = flower._handle_train(msg, context)
        if cid == BAD and rnd == 0:
            reply.content[flower.RECORD]["payload"] = b"not an upload"
        if cid == BAD and rnd == 2:
            time.sleep(TIMEOUT_S + 15)  # answers, but after the server gave up on it
        return reply

    return app


def test_failing_nodes_are_recorded_and_left_out(tmp_path, cache):  # noqa: F811
    cfg = load_config(None, tiny_overrides(cache, rounds=3))
    lost = run_federated(cfg, tmp_path / "lost", progress=False, executor=hostile_executor(BAD, fail=True)).records
    got = flower.run_simulation(cfg, tmp_path / "flower", timeout_s=TIMEOUT_S, client_app=faulty_client_app()).records
    assert len(got) == 3
    reasons = [r["failed"] for r in got]
    assert all([f["cid"] for f in fl] == [BAD] for fl in reasons), reasons
    assert "upload rejected: undecodable" in reasons[0][0]["reason"]
    assert "the client crashed" in reasons[1][0]["reason"]
    assert f"no reply within {TIMEOUT_S:g} s" in reasons[2][0]["reason"]
    assert [r["global"] for r in got] == [r["global"] for r in lost]  # weights renormalised over the others
    assert all(BAD not in [c["cid"] for c in r["clients"]] for r in (got[1], got[2]))  # no upload, no energy
