"""The server screens uploads (issue 12, item 1): hostile or broken uploads are rejected,
logged and left out; the run goes on and the global model stays finite."""
import math
import struct

import pytest
import torch

from psfl.codecs import decode_state, encode_state
from psfl.config import load_config
from psfl.utils.errors import PsflError, RoundFailedError
from psfl.methods.base import make_generator
from psfl.methods.wire import decode_like, decode_model, encode_model, wire_keys
from psfl.runners.inprocess import ClientFailure, run_federated
from test_runner import tiny_overrides

TIMING = ("time_s", "compute_s")


def last_float(payload: bytes, value: float) -> bytes:
    """The payload with its last float32 (the last value of a dense entry) replaced."""
    return payload[:-4] + struct.pack("<f", value)


def raw_entries(method, payload: bytes) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The wire entries of an upload, undecoded (flat kept values for masked entries)."""
    keys = wire_keys(method.template)
    return keys, decode_state(payload, keys)


def reshaped(method, payload: bytes) -> bytes:
    """Same values, one 1-D entry sent as (1, n): the right count, the wrong shape."""
    keys, got = raw_entries(method, payload)
    k = next(k for k in keys if got[k].dim() == 1 and k not in getattr(method, "mask_keys", ()))
    got[k] = got[k].reshape(1, -1)
    return encode_state({k: got[k] for k in keys}, lambda n, t: ("dense", {}))


def extra_value(method, payload: bytes) -> bytes:
    """A masked upload with one value more than the kept positions (a value where the
    broadcast mask is zero)."""
    keys, got = raw_entries(method, payload)
    k = method.mask_keys[0]
    got[k] = torch.cat([got[k], torch.ones(1)])
    return encode_state({k: got[k] for k in keys}, lambda n, t: ("dense", {}))


CORRUPT = {
    "nan": lambda m, p: last_float(p, math.nan),
    "inf": lambda m, p: last_float(p, math.inf),
    "huge": lambda m, p: last_float(p, 1e30),
    "truncated": lambda m, p: p[:-5],
    "garbage": lambda m, p: bytes(range(256)) * 3,
    "wrong shape": reshaped,
    "mask-violating": extra_value,
}
REASON = {"nan": "non-finite", "inf": "non-finite", "huge": "norm", "truncated": "undecodable",
          "garbage": "undecodable", "wrong shape": "shape", "mask-violating": "kept positions"}


def hostile_executor(bad_cid: int, plan: dict[int, str] | None = None, fail: bool = False):
    """A client executor that runs every client honestly in this process, then corrupts
    client ``bad_cid``'s upload as ``plan[round]`` says (or reports it failed)."""
    def bind(method):
        states = {}

        def run(rnd, payload, cids, snrs):
            for cid in cids:
                st = states.setdefault(cid, method.init_client(cid))
                res = method.client_update(cid, st, rnd, payload, float(snrs[cid]),
                                           make_generator(method.cfg.seed, rnd, cid, 0xC11))
                if cid == bad_cid and fail:
                    yield cid, ClientFailure("node lost"), 0.0
                    continue
                if cid == bad_cid and plan and rnd in plan:
                    res.payload = CORRUPT[plan[rnd]](method, res.payload)
                yield cid, res, 0.0
        return run
    return bind


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING + ("failed", "clients")} for r in records]


@pytest.mark.parametrize("method,plan", [
    ("fedavg", {0: "nan", 1: "huge", 2: "wrong shape"}),
    ("psfl", {0: "inf", 1: "mask-violating", 2: "truncated"}),
    ("stc", {0: "garbage", 1: "truncated", 2: "garbage"}),
])
def test_hostile_uploads_are_rejected_and_logged(tmp_path, cache, method, plan):
    over = tiny_overrides(cache, rounds=3, method=method) + ["data.num_clients=4"]
    cfg = load_config(None, over)
    recs = run_federated(cfg, tmp_path / "h", progress=False, executor=hostile_executor(1, plan)).records
    for rec in recs:
        kind = plan[rec["round"]]
        assert [f["cid"] for f in rec["failed"]] == [1], rec.get("failed")
        assert REASON[kind] in rec["failed"][0]["reason"], (kind, rec["failed"])
        assert math.isfinite(rec["global"]["loss"]) and math.isfinite(rec["global"]["psnr"])
        bad = next(c for c in rec["clients"] if c["cid"] == 1)
        assert "rejected" in bad and bad["upload_bits"] > 0  # it transmitted: its energy counts
    # the same run with client 1 simply lost every round: the global model is the same
    lost = run_federated(cfg, tmp_path / "l", progress=False, executor=hostile_executor(1, fail=True)).records
    assert [r["global"] for r in lost] == [r["global"] for r in recs]
    assert all(r["failed"] == [{"cid": 1, "reason": "node lost"}] for r in lost)


def test_too_few_acceptable_uploads_stop_the_run_resumably(tmp_path, cache):
    over = tiny_overrides(cache, rounds=2, method="fedavg") + ["data.num_clients=3", "server.min_clients=3"]
    cfg = load_config(None, over)
    with pytest.raises(RoundFailedError, match="round 2: 2 acceptable upload.*server.min_clients = 3"):
        run_federated(cfg, tmp_path / "r", progress=False, executor=hostile_executor(2, {1: "nan"}))
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1  # round 1 kept


def test_decoders_never_reshape():
    template = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    good = encode_model({"w": torch.ones(2, 3), "b": torch.ones(3)})
    assert decode_model(good, template)["w"].shape == (2, 3)
    bad = encode_state({"w": torch.ones(3, 2), "b": torch.ones(3)}, lambda n, t: ("dense", {}))
    with pytest.raises(PsflError, match="'w' has shape \\(3, 2\\), expected \\(2, 3\\)"):
        decode_model(bad, template)
    with pytest.raises(PsflError, match="shape"):
        decode_like(bad, template, ["w", "b"])


def test_norm_bound_is_configurable_and_validated(cache):
    with pytest.raises(PsflError, match="server.max_norm_ratio"):
        load_config(None, tiny_overrides(cache) + ["server.max_norm_ratio=0.5"])
    with pytest.raises(PsflError, match="server.min_clients"):
        load_config(None, tiny_overrides(cache) + ["server.min_clients=4"])


def test_robust_rules_equal_hand_computations():
    import numpy as np

    from psfl.fl.aggregate import coordinate_median, trimmed_mean

    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(3, 4, generator=g), "n": torch.tensor(i)} for i in range(7)]
    w = np.stack([s["w"].numpy() for s in states])
    assert np.allclose(coordinate_median(states)["w"].numpy(), np.median(w, axis=0), atol=1e-6)
    srt = np.sort(w, axis=0)
    assert np.allclose(trimmed_mean(states, trim=0.2)["w"].numpy(), srt[1:6].mean(0), atol=1e-6)  # 1 off each end
    assert int(coordinate_median(states)["n"]) == 3


def shifted(method, payload: bytes) -> bytes:
    """A well-formed state 3.0 away from the truth in every coordinate (a poisoning client
    that stays under any norm bound the others set)."""
    return encode_model({k: v + 3.0 for k, v in decode_model(payload, method.template).items()})


def test_median_resists_a_poisoning_client_that_the_mean_follows(tmp_path, cache):
    CORRUPT["shifted"] = shifted
    base = tiny_overrides(cache, rounds=2, method="fedavg") + ["data.num_clients=5", "server.max_norm_ratio=0"]
    plan = {0: "shifted", 1: "shifted"}

    def loss(extra, name, bad=True):
        ex = hostile_executor(1, plan) if bad else hostile_executor(-1)
        recs = run_federated(load_config(None, base + extra), tmp_path / name, progress=False, executor=ex).records
        return recs[-1]["global"]["loss"]

    honest = loss(['server.aggregation="median"'], "honest", bad=False)
    median = loss(['server.aggregation="median"'], "median")
    mean = loss([], "mean")
    assert abs(median - honest) < 0.25 * abs(mean - honest), (honest, median, mean)
