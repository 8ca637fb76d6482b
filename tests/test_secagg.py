"""Secure aggregation on the Flower engine (issue 12, item 6): Flower's SecAgg+ workflow
carries the clients' updates; the server learns their weighted mean (Eq. 10) and nothing
of one client."""
import math

import numpy as np
import pytest
import torch

from psfl.config import load_config
from psfl.utils.errors import PsflError, RoundFailedError
from psfl.methods import check_run_config
from psfl.runners.inprocess import run_federated

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from flwr.common import bytes_to_ndarray  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key  # noqa: E402

from psfl.runners import flower  # noqa: E402

from test_runner import tiny_overrides  # noqa: E402

# one Flower federation at a time, on one worker (make test: --dist loadgroup; tests/conftest.py)
pytestmark = pytest.mark.xdist_group("flower")

SECURE = ["server.secure_aggregation=true"]
CLIP = 8.0  # server.secagg_clip default
LEVELS = 2 ** 22  # SecAgg+'s quantisation range (flwr's default)


class Spy(flower._SecAggGrid):
    """Keeps every masked vector the server receives, per node."""
    masked: dict[int, list[np.ndarray]] = {}

    def send_and_receive(self, messages, *a, **kw):
        replies = super().send_and_receive(messages, *a, **kw)
        for r in replies:
            rec = r.content.config_records.get(RECORD_KEY_CONFIGS) if not r.has_error() else None
            if rec is not None and Key.MASKED_PARAMETERS in rec:
                Spy.masked[r.metadata.src_node_id] = [bytes_to_ndarray(b) for b in rec[Key.MASKED_PARAMETERS]]
        return replies


def test_secure_mean_equals_eq10_within_quantisation_and_hides_each_upload(tmp_path, cache, monkeypatch):
    """One round of tiny PSFL: the global student after SecAgg+ equals the in-process
    Eq. 10 mean within SecAgg+'s quantisation (each of K clients rounds its weighted
    update to a grid of 2 clip / 2^22; the weights sum to >= 1 over the largest volume),
    and every masked vector the server saw is uniform noise, uncorrelated with the
    update that the round applied (an unmasked or merely quantised update would follow
    it closely: the clients start from the same weights)."""
    monkeypatch.setattr(flower, "_SecAggGrid", Spy)
    Spy.masked = {}
    over = tiny_overrides(cache, rounds=1)
    ref = run_federated(load_config(None, over), tmp_path / "plain", progress=False)
    got = flower.run_simulation(load_config(None, over + SECURE), tmp_path / "secure")
    a = torch.load(tmp_path / "plain" / "global_model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "secure" / "global_model.pt", weights_only=False)["state_dict"]
    k = 3
    bound = k * 2 * CLIP / LEVELS + 1e-6
    worst = max(float((a[n].double() - b[n].double()).abs().max()) for n in a if a[n].is_floating_point())
    assert 0 < worst <= bound, (worst, bound)  # > 0: it really went through SecAgg+'s quantiser
    assert math.isclose(got.records[0]["global"]["psnr"], ref.records[0]["global"]["psnr"], abs_tol=0.01)
    # the server saw K masked vectors; none reveals its client's update
    assert len(Spy.masked) == k
    init = load_start(over)
    applied = np.concatenate([(b[n].double() - init[n].double()).reshape(-1).numpy()
                              for n in sorted(init) if init[n].is_floating_point()])
    for vecs in Spy.masked.values():
        flat = np.concatenate([v.reshape(-1) for v in vecs]).astype(np.float64)
        flat = flat[1:] if flat.size == applied.size + 1 else flat  # SecAgg+ prepends the weight factor
        assert flat.size == applied.size
        # the masks come from fresh keys (not seeded): bounds of 5 standard deviations of a
        # uniform vector of this length (false alarm < 1e-6); an unmasked update would follow the
        # applied mean update closely (every client starts from the same weights)
        n = flat.size
        assert abs(flat.mean() / 2 ** 32 - 0.5) < 5 * (12 * n) ** -0.5  # uniform over the modulus range
        assert abs(np.corrcoef(flat, applied)[0, 1]) < 5 * n ** -0.5
    # the energy is that of the bytes each client sent under the protocol (masked vector included)
    for c in got.records[0]["clients"]:
        assert c["upload_bits"] >= 8 * 8 * applied.size


def load_start(over):
    """The global student that round 0 starts from (the decoded round-0 broadcast, pruned
    by that round's SNRs)."""
    from psfl.fl.energy import round_snrs
    from psfl.methods import METHODS, build_env, options_for

    cfg = load_config(None, over)
    method = METHODS.get(cfg.method)(build_env(cfg, progress=False), options_for(cfg), cfg)
    method.init_server()
    ch = cfg.channel
    snrs = round_snrs(ch.snr_trace, cfg.seed, 0, cfg.data.num_clients, ch.snr_min_db, ch.snr_max_db)
    return method.decode_broadcast(method.broadcast(0, snrs)[0])


def test_secure_aggregation_is_refused_where_it_cannot_act(cache):
    with pytest.raises(PsflError, match="server.secure_aggregation: method 'stc'"):
        check_run_config(load_config(None, tiny_overrides(cache, method="stc") + SECURE))
    with pytest.raises(PsflError, match="server.secure_aggregation"):
        load_config(None, tiny_overrides(cache) + SECURE + ["server.aggregation='median'"])
    with pytest.raises(PsflError, match="server.secagg_clip.*only server.secure_aggregation"):
        load_config(None, tiny_overrides(cache) + ["server.secagg_clip=4"])
    with pytest.raises(PsflError, match="secure aggregation runs on the Flower engine"):
        run_federated(load_config(None, tiny_overrides(cache) + SECURE), cache / "never", progress=False)
    assert not (cache / "never").exists()


@pytest.mark.slow  # one more Flower simulation
def test_an_update_beyond_the_clip_range_fails_the_client_not_silently(tmp_path, cache, capfd):
    over = tiny_overrides(cache, rounds=1) + SECURE + ["server.secagg_clip=1e-9"]
    with pytest.raises(RoundFailedError, match="round 1: 0 acceptable upload"):
        flower.run_simulation(load_config(None, over), tmp_path / "r")
    assert "exceeds server.secagg_clip = 1e-09" in capfd.readouterr().err  # each client's reason is logged
    assert not (tmp_path / "r" / "metrics.jsonl").is_file()
