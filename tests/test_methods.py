"""Every method behind one interface: tiny federated runs, real wire formats, compare."""
import csv
import json
import math

import pytest
import torch

from psfl.cli import main
from psfl.config import load_config
from psfl.methods import METHODS, build_env
from psfl.methods.wire import decode_kept, decode_masked, decode_model, encode_kept, encode_masked, encode_model
from psfl.runners.inprocess import run_federated

from test_runner import tiny_overrides  # noqa: E402


@pytest.fixture(scope="module")
def env(cache):
    return build_env(load_config(None, tiny_overrides(cache, rounds=2)))


def test_masked_broadcast_roundtrip_carries_regrown_zeros():
    state = {"w": torch.tensor([[0.5, 0.0], [0.0, -2.0]]), "b": torch.tensor([1.0, 2.0]),
             "n": torch.tensor(3)}
    mask = {"w": torch.tensor([[1.0, 1.0], [0.0, 1.0]])}  # (0, 1) is kept but exactly zero
    payload = encode_masked(state, mask)
    got, got_mask = decode_masked(payload, state, ["w"])
    assert torch.equal(got["w"], state["w"]) and torch.equal(got["b"], state["b"])
    assert torch.equal(got_mask["w"], mask["w"]) and "n" not in got


def test_masked_upload_carries_only_kept_values():
    """PSFL's upload under a mask both ends hold: 4 bytes per kept value and no
    positions; pruned positions come back as zeros, kept ones exactly."""
    g = torch.Generator().manual_seed(0)
    mask = {"w": (torch.rand(64, 64, generator=g) > 0.7).float()}
    state = {"w": torch.randn(64, 64, generator=g) * mask["w"], "b": torch.randn(64, generator=g)}
    kept, dense = encode_kept(state, mask), encode_model(state)
    pruned = int((mask["w"] == 0).sum())
    assert abs(4 * pruned - (len(dense) - len(kept))) <= 4  # only the shape/length varints differ
    got = decode_kept(kept, state, mask)
    assert torch.equal(got["w"], state["w"]) and torch.equal(got["b"], state["b"])


@pytest.mark.parametrize("method", METHODS.names())
def test_each_method_runs_and_measures_bits(method, env, tmp_path):
    cfg = load_config(None, tiny_overrides(env.cfg.evaluator.cache_dir, rounds=2, method=method))
    recs = run_federated(cfg, tmp_path, progress=False, env=env).records
    assert len(recs) == 2
    for r in recs:
        assert r["upload_bits"] == sum(c["upload_bits"] for c in r["clients"]) > 0
        assert math.isfinite(r["global"]["loss"]) and 0 <= r["global"]["accuracy"] <= 1
    if method == "fedpaq":
        assert all(len(r["clients"]) == 2 for r in recs)  # ceil(0.5 * 3)
    if method == "psfl-no-agp":
        assert all(r["zeta"] == 0 for r in recs)


def test_compressed_methods_send_fewer_bits(env, tmp_path):
    bits = {}
    for m in ("fedavg", "stc", "fttq", "fedpaq"):
        cfg = load_config(None, tiny_overrides(env.cfg.evaluator.cache_dir, rounds=1, method=m))
        rec = run_federated(cfg, tmp_path / m, progress=False, env=env).records[-1]
        bits[m] = rec["upload_bits"] / len(rec["clients"])
    assert bits["stc"] < 0.1 * bits["fedavg"]
    assert bits["fttq"] < 0.2 * bits["fedavg"]  # 2 bits/weight (+ float32 biases/norms)
    assert bits["fedpaq"] < 0.35 * bits["fedavg"]  # 16 levels: 5 bits + sign at most


def test_tiny_compare_cli(cache, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--no-progress", "--out", str(out), "--methods",
            "psfl,fedavg,stc,fttq,fedpaq,psfl-no-pld,psfl-no-agp,fedavg-csc"]
    for o in tiny_overrides(cache, rounds=2):
        args += ["--set", o]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["method"] for r in rows] == ["psfl", "fedavg", "stc", "fttq", "fedpaq", "psfl-no-pld",
                                           "psfl-no-agp", "fedavg-csc"]
    kn = {r["method"]: r["bandwidth_ratio"] for r in rows}  # every model's k/n, from the run's provenance
    assert kn["fedavg"] == "tiny-M 1/4" and kn["fedavg-csc"] == "tiny-CSC 0.0816"  # 49 x 8 / 2 / 784; 16 x 8 / 2 / 784
    assert kn["psfl"].startswith("tiny-CSC 0.0816, tiny-") and "tiny-M 1/4" in kn["psfl-no-pld"]
    for name in ("global_loss.png", "global_accuracy.png", "local_accuracy.png", "energy_boxplot.png",
                 "summary.md"):
        assert (out / name).stat().st_size > 0
    assert "| psfl |" in capsys.readouterr().out
    share = json.loads((out / "psfl" / "provenance.json").read_text())["accuracy_baselines"]["majority_class"]
    assert f"one class for every image (the most frequent) {share:.4f}; guessing 0.1000" in \
        (out / "summary.md").read_text()


def test_fedpaq_buckets_have_their_own_norms():
    """QSGD in buckets of d elements (the QSGD paper's d = 512): each bucket is scaled by
    its own norm, so levels above 1 occur and the quantisation error falls; the upload
    decodes to exactly the per-bucket de-quantised update."""
    from psfl.codecs import qsgd_dequantize, qsgd_quantize
    from psfl.methods.contenders import FedPAQ, FedPAQOptions

    template = {"w": torch.zeros(40, 50), "b": torch.zeros(7)}
    g = torch.Generator().manual_seed(0)
    upd = {"w": torch.randn(40, 50, generator=g), "b": torch.randn(7, generator=g)}
    err, levels_seen = {}, {}
    for bucket in (0, 512):
        m = object.__new__(FedPAQ)  # only its wire format is exercised
        m.template, m.keys, m.s, m.options = template, ["w", "b"], 16, FedPAQOptions(bucket=bucket)
        payload = m.encode_up(0, {}, upd, template, torch.Generator().manual_seed(1))
        got = m.decode_up(payload)
        # the same draws, by hand: bucket by bucket, in key order
        g1, expect = torch.Generator().manual_seed(1), {}
        top = 0
        for k in ("w", "b"):
            flat, d = upd[k].reshape(-1), bucket or upd[k].numel()
            parts = []
            for a in range(0, flat.numel(), d):
                norm, signs, levels = qsgd_quantize(flat[a:a + d], 16, g1)
                assert abs(norm - float(flat[a:a + d].norm())) < 1e-4
                top = max(top, int(levels.max())) if k == "w" else top
                parts.append(qsgd_dequantize(norm, signs, levels, 16))
            expect[k] = torch.cat(parts).view_as(upd[k])
        assert all(torch.equal(got[k], expect[k]) for k in got)
        err[bucket] = sum(float((got[k] - upd[k]).pow(2).sum()) for k in got)
        levels_seen[bucket] = top
    assert levels_seen[0] <= 2 < levels_seen[512]  # one norm for 2,000 weights: s is nominal
    assert err[512] < 0.5 * err[0]


def test_psfl_plus_upload_is_the_quantised_update_of_kept_weights():
    """psfl-plus: the server recovers received + Q(update) at kept positions (each
    element within QSGD's bound norm/s of the true weight), zero at pruned ones, and the
    other entries exactly; the payload is far below PSFL's float32 kept values."""
    from psfl.methods.psfl import PSFL, PSFLPlus, PSFLPlusOptions

    g = torch.Generator().manual_seed(0)
    shapes = {"w": (30, 40), "b": (40,), "bn.running_var": (40,)}
    down = {k: torch.randn(*v, generator=g) for k, v in shapes.items()}
    mask = {"w": (torch.rand(30, 40, generator=g) > 0.4).float()}
    down["w"] *= mask["w"]
    student = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in down.items()}
    student["w"] *= mask["w"]
    plus, plain = object.__new__(PSFLPlus), object.__new__(PSFL)  # only their wire formats are exercised
    for m in (plus, plain):
        m.mask_keys, m.global_state, m.mask = ["w"], {k: v.clone() for k, v in down.items()}, mask
    plus.options = PSFLPlusOptions(s=16, bucket=512)
    payload = plus.send({}, 0, student, down, mask, torch.Generator().manual_seed(1))
    got = plus.decode_upload(payload)
    assert torch.equal(got["b"], student["b"]) and torch.equal(got["bn.running_var"], student["bn.running_var"])
    keep = mask["w"].bool()
    assert torch.all(got["w"][~keep] == 0)
    upd = (student["w"] - down["w"])[keep]
    bound = max(float(upd[a:a + 512].norm()) for a in range(0, upd.numel(), 512)) / 16
    err = (got["w"][keep] - student["w"][keep]).abs().max()
    assert 0 < err <= bound + 1e-6
    plain_payload = plain.send({}, 0, student, down, mask, torch.Generator())
    assert torch.equal(plain.decode_upload(plain_payload)["w"], student["w"])
    assert len(payload) < 0.4 * len(plain_payload)
