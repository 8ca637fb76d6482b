"""AGP's settings where the paper is silent (issue 9): score rules, layer floor,
warm-up, regrowth values, BatchNorm recalibration; each against what it promises."""
import numpy as np
import pytest
import torch
from torch import nn

from psfl.config import RunConfig
from psfl.fl.agp import apply_mask, pruned_share, update_mask
from psfl.fl.local import recalibrate_bn
from psfl.methods.psfl import PSFL


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"big.weight": torch.randn(40, 50, generator=g), "small.weight": 1e-2 * torch.randn(8, 9, generator=g)}


KEYS = ["big.weight", "small.weight"]


def test_per_layer_prunes_every_tensor_to_zeta_by_its_own_magnitudes():
    st = _state()
    mask = update_mask(st, None, 0.6, KEYS, torch.Generator(), score="per_layer")
    for k in KEYS:
        m = mask[k].bool()
        assert int((~m).sum()) == round(0.6 * st[k].numel())
        assert st[k].abs()[~m].max() <= st[k].abs()[m].min()


def test_raw_magnitude_is_one_global_threshold_and_wipes_a_small_scale_layer():
    st = _state()
    mask = update_mask(st, None, 0.5, KEYS, torch.Generator(), score="magnitude")
    assert float(mask["small.weight"].sum()) == 0  # the known failure the layer-normalised rule avoids
    flat_w = torch.cat([st[k].abs().reshape(-1) for k in KEYS])
    flat_m = torch.cat([mask[k].reshape(-1) for k in KEYS]).bool()
    assert flat_w[~flat_m].max() <= flat_w[flat_m].min()


def test_layer_floor_keeps_a_share_of_every_tensor():
    st = _state()
    mask = update_mask(st, None, 0.9, KEYS, torch.Generator(), score="magnitude", layer_floor=0.25)
    for k in KEYS:
        kept = mask[k].bool()
        assert float(kept.float().mean()) >= 0.25
        top = torch.topk(st[k].abs().reshape(-1), int(np.ceil(0.25 * st[k].numel()))).indices
        assert bool(kept.reshape(-1)[top].all())  # the best-scoring quarter survives
    n = sum(st[k].numel() for k in KEYS)
    floor = sum(int(np.ceil(0.25 * st[k].numel())) for k in KEYS)
    assert pruned_share(mask) == pytest.approx(1 - floor / n)  # zeta = 0.9 is capped by the floors
    mild = update_mask(st, None, 0.5, KEYS, torch.Generator(), score="magnitude", layer_floor=0.25)
    assert pruned_share(mild) == pytest.approx(round(0.5 * n) / n)  # the share is exact when floors allow


def _server(regrow: str, warmup: int = 0) -> PSFL:
    m = object.__new__(PSFL)  # only the server's broadcast is exercised
    cfg = RunConfig()
    cfg.agp.regrow, cfg.agp.warmup_rounds = regrow, warmup
    m.cfg, m.agp, m.mask_keys, m.mask, m.dense, m.zeta = cfg, True, KEYS, None, None, 0.0
    m.global_state = _state()
    return m


@pytest.mark.parametrize("regrow", ["zeros", "dense"])
def test_regrown_weights_restart_at_zero_or_at_their_last_value(regrow):
    from psfl.methods.wire import decode_masked

    m = _server(regrow)
    before = {k: v.clone() for k, v in m.global_state.items()}
    m.broadcast(0, np.array([0.0, 5.0]))  # zeta = 0.9: prune
    first = {k: v.clone() for k, v in m.mask.items()}
    m.global_state = {k: v + 1.0 * m.mask[k] for k, v in m.global_state.items()}  # "training" moves kept weights
    trained = {k: v.clone() for k, v in m.global_state.items()}
    payload, info = m.broadcast(1, np.array([25.0, 20.0]))  # zeta = 0.1: regrow
    assert info["zeta"] == pytest.approx(0.1)
    got, mask = decode_masked(payload, m.global_state, KEYS)
    for k in KEYS:
        regrown = (first[k] == 0) & (mask[k] == 1)
        stayed = (first[k] == 1) & (mask[k] == 1)
        assert int(regrown.sum()) > 0
        want = before[k][regrown] if regrow == "dense" else torch.zeros(int(regrown.sum()))
        assert torch.equal(got[k][regrown], want)
        assert torch.equal(got[k][stayed], trained[k][stayed])


def test_warmup_rounds_broadcast_dense_models():
    m = _server("zeros", warmup=2)
    for rnd in range(3):
        _, info = m.broadcast(rnd, np.array([0.0, 0.0]))
        assert (info["zeta"], info["pruned_share"] == 0) == ((0.0, True) if rnd < 2 else (0.9, False))


def test_bn_recalibration_gives_the_data_statistics():
    """After recalibration, BatchNorm's running mean is the mean of the data seen and its
    running variance the mean of the per-batch unbiased variances (equal batches); the
    stale statistics are gone and the momentum is restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_mean.fill_(7.0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    batches = [(2.0 + torch.randn(16, 3, generator=g), None) for _ in range(5)]
    n = recalibrate_bn(model, batches, lambda x: model(x))
    assert n == 5 and not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        h = [model[0](x) for x, _ in batches]
    torch.testing.assert_close(model[1].running_mean, torch.cat(h).mean(0))
    torch.testing.assert_close(model[1].running_var, torch.stack([t.var(0, unbiased=True) for t in h]).mean(0))
    assert recalibrate_bn(nn.Linear(2, 2), batches, lambda x: x) == 0
