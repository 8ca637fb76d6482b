"""Server math: FedAvg (Eq. 10), AGP (Eq. 22 + pruning/regrowth), energy (Eqs. 12-14)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from psfl.fl.agp import (apply_mask, mask_parameters_, prunable_keys, pruned_share, pruning_ratio,
                         update_mask)
from psfl.fl.aggregate import fedavg
from psfl.fl.energy import communication_energy, link_cost, round_snrs, transmission_delay, uplink_rate
from psfl.fl.mentors import assign_mentors
from psfl.models import create_model


def test_fedavg_weighted_by_num_samples_including_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.running_mean": torch.tensor([0.0]),
         "bn.num_batches_tracked": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.running_mean": torch.tensor([4.0]),
         "bn.num_batches_tracked": torch.tensor(20)}
    out = fedavg([a, b], [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 5.0]))  # (1*1 + 3*3)/4, (2 + 18)/4
    torch.testing.assert_close(out["bn.running_mean"], torch.tensor([3.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert int(out["bn.num_batches_tracked"]) == 18  # round(17.5) -> 18 (banker's: 18)


def test_pruning_ratio_eq22_hand_and_clamp():
    # mean 10 dB, psi in [0, 25] dB: (25 - 10) / 25 = 0.6
    assert pruning_ratio([5.0, 15.0], 0.0, 25.0) == pytest.approx(0.6)
    assert pruning_ratio([0.0, 0.0], 0.0, 25.0, zeta_max=0.9) == pytest.approx(0.9)  # clamped
    assert pruning_ratio([25.0], 0.0, 25.0) == 0.0
    assert pruning_ratio([30.0], 0.0, 25.0) == 0.0  # clamped below


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
            "bn.weight": torch.ones(4), "bn.running_var": torch.ones(4),
            "fc.weight": torch.randn(10, 8, generator=g), "bn.num_batches_tracked": torch.tensor(3)}


class _Misnamed(nn.Module):
    """Names that lie about the type: structure must be read from modules, not keys."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn_proj = nn.Linear(4, 4)  # a linear layer whose name says "bn"
        self.norm_up = nn.ConvTranspose2d(4, 2, 2)  # a transposed conv whose name says "norm"
        self.conv_out = nn.BatchNorm2d(2)  # a BatchNorm whose name says "conv"
        self.head = nn.Sequential(nn.LayerNorm(8), nn.GroupNorm(2, 4), nn.Linear(8, 3, bias=False))


def test_prunable_keys_by_module_type_not_name():
    m = _Misnamed()
    assert prunable_keys(m) == ["conv.weight", "bn_proj.weight", "norm_up.weight", "head.2.weight"]
    assert prunable_keys(m, prune_biases=True) == [
        "conv.weight", "conv.bias", "bn_proj.weight", "bn_proj.bias", "norm_up.weight", "norm_up.bias",
        "head.2.weight"]


@pytest.mark.parametrize("preset", ["tiny-CSC", "cpu-CSC"])
def test_prunable_keys_on_the_csc_never_touch_batchnorm(preset):
    model = create_model(preset, img_size=28, in_chans=1)
    keys = prunable_keys(model, prune_biases=True)
    bn = {f"{name}.{k}" for name, mod in model.named_modules()
          if isinstance(mod, nn.modules.batchnorm._BatchNorm) for k in mod.state_dict()}
    assert "layer2.0.downsample.1.bias" in bn and "bn1.running_var" in bn  # the layout this test assumes
    assert not bn & set(keys)
    # conv/linear weights: every >= 2-d tensor of the CSC; biases: the three transposed convolutions
    assert [k for k in keys if not k.endswith(".bias")] == prunable_keys(model) == [
        k for k, v in model.state_dict().items() if v.ndim >= 2]
    assert [k for k in keys if k.endswith(".bias")] == ["decoder.0.bias", "decoder.2.bias", "decoder.4.bias"]


def test_prunable_keys_on_the_gsc_skip_layernorms_and_tokens():
    keys = prunable_keys(create_model("tiny-M", img_size=28, in_chans=1), prune_biases=True)
    assert "blocks.0.attn.qkv.weight" in keys and "blocks.0.attn.qkv.bias" in keys
    assert not [k for k in keys if "norm" in k or "token" in k]  # LayerNorms; cls/mask tokens


KEYS = ["conv.weight", "fc.weight"]  # the weight tensors of _state()


def test_magnitude_pruning_exact_share_and_smallest_removed():
    st = _state()
    keys = KEYS
    g = torch.Generator().manual_seed(0)
    mask = update_mask(st, None, 0.3, keys, g)
    n = sum(st[k].numel() for k in keys)
    assert pruned_share(mask) == pytest.approx(round(0.3 * n) / n)
    flat = torch.cat([(st[k].abs() / st[k].pow(2).mean().sqrt()).reshape(-1) for k in keys])
    m = torch.cat([mask[k].reshape(-1) for k in keys]).bool()
    assert flat[~m].max() <= flat[m].min()  # one global threshold on layer-normalised |w|

    pruned = apply_mask(st, mask)
    assert all(int((pruned[k] == 0).sum()) == int((mask[k] == 0).sum()) for k in keys)
    assert torch.equal(pruned["bn.running_var"], st["bn.running_var"])

def test_no_layer_collapse_when_one_layer_has_a_small_scale():
    g = torch.Generator().manual_seed(0)
    st = {"big.weight": torch.randn(64, 64, generator=g), "small.weight": 1e-3 * torch.randn(64, 64, generator=g)}
    mask = update_mask(st, None, 0.7, ["big.weight", "small.weight"], g)
    for k in st:  # each layer keeps about 30 %, not 0 % for the small-scale one
        assert 0.2 < float(mask[k].mean()) < 0.4


def test_more_pruning_keeps_old_mask_and_regrowth_is_random_and_seeded():
    st = _state()
    keys = KEYS
    g = torch.Generator().manual_seed(0)
    m1 = update_mask(st, None, 0.3, keys, g)
    st1 = apply_mask(st, m1)
    m2 = update_mask(st1, m1, 0.6, keys, g)  # zeta rises: prune more
    assert all(bool((m2[k] <= m1[k]).all()) for k in keys)  # old pruned stay pruned
    st2 = apply_mask(st1, m2)
    n = sum(st[k].numel() for k in keys)
    r1 = update_mask(st2, m2, 0.2, keys, torch.Generator().manual_seed(1))  # zeta falls: regrow
    r2 = update_mask(st2, m2, 0.2, keys, torch.Generator().manual_seed(1))
    r3 = update_mask(st2, m2, 0.2, keys, torch.Generator().manual_seed(2))
    assert pruned_share(r1) == pytest.approx(round(0.2 * n) / n)
    assert all(bool((r1[k] >= m2[k]).all()) for k in keys)  # only regrowth
    assert all(torch.equal(r1[k], r2[k]) for k in keys)
    assert any(not torch.equal(r1[k], r3[k]) for k in keys)


def test_mask_held_in_place():
    p = {"w": torch.ones(2, 2)}
    mask_parameters_(p, {"w": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    assert torch.equal(p["w"], torch.eye(2))


# Hand values of Eq. 12 at SNRs where dB and linear differ (at 10 dB they coincide,
# 10 log10 10 = 10, so a dB-as-linear bug would pass there): psi = 10^(dB/10).
# (snr_db, psi by hand): 0 dB -> 1, 3 dB -> 10^0.3 = 1.99526..., 20 dB -> 100.
RATE_CASES = [(0.0, 1.0), (3.0, 1.9952623149688795), (20.0, 100.0)]


@pytest.mark.parametrize("snr_db,psi", RATE_CASES)
def test_uplink_rate_eq12_uses_linear_snr(snr_db, psi):
    # float64 end to end (math.log2 on Python floats): 1e-12 relative covers libm rounding
    assert uplink_rate(1e6, snr_db) == pytest.approx(1e6 * math.log2(1.0 + psi), rel=1e-12)


def test_energy_eqs_12_14_hand_computation():
    assert uplink_rate(1e6, 0.0) == pytest.approx(1e6, rel=1e-12)  # psi = 1 -> log2(2) = 1
    assert uplink_rate(2e6, 20.0) == pytest.approx(2e6 * 6.658211482751795, rel=1e-12)  # log2(101)
    assert transmission_delay(8000, 4000.0) == 2.0
    assert communication_energy(0.1, 2.0) == pytest.approx(0.2, rel=1e-12)
    c = link_cost(b"\x00" * 1000, 0.0, 1e6, 0.1)  # Z = 8000 bits at 1 Mbit/s: 8 ms, 0.8 mJ
    assert c.bits == 8000 and c.delay_s == pytest.approx(8e-3, rel=1e-12)
    assert c.energy_j == pytest.approx(8e-4, rel=1e-12)
    c = link_cost(b"\x00" * 1000, 20.0, 1e6, 0.1)
    assert c.rate_bps == pytest.approx(1e6 * 6.658211482751795, rel=1e-12)
    assert c.energy_j == pytest.approx(0.1 * 8000 / (1e6 * 6.658211482751795), rel=1e-12)


def test_snr_trace_seeded_and_in_range():
    a = round_snrs("uniform", 0, 3, 9, 0.0, 25.0)
    assert np.array_equal(a, round_snrs("uniform", 0, 3, 9, 0.0, 25.0))
    assert not np.array_equal(a, round_snrs("uniform", 0, 4, 9, 0.0, 25.0))
    assert a.min() >= 0 and a.max() <= 25


def test_mentor_rule_reproduces_table1():
    vols = [1854, 3703, 4429, 4783, 5467, 5634, 5891, 8958, 9281]
    assert assign_mentors(vols) == ["M"] * 4 + ["L"] * 3 + ["H"] * 2
    assert assign_mentors(vols, compute_budget=[2] * 8 + [0])[-1] == "M"
    assert assign_mentors(vols, "uniform-M") == ["M"] * 9
    assert assign_mentors(vols, overrides=["H"] * 9) == ["H"] * 9
