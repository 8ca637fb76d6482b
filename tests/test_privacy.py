"""Client-level differential privacy (issue 12, item 6): clipping and noise as specified,
epsilon from the RDP accountant equal to the closed form, and runs that use it."""
import math

import numpy as np
import pytest
import torch

from psfl.config import load_config
from psfl.utils.errors import PsflError
from psfl.fl.privacy import ORDERS, dp_epsilon, privatize
from psfl.runners.inprocess import run_federated
from test_runner import tiny_overrides


def test_update_is_clipped_to_the_norm_and_noised_with_sigma_times_clip():
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.zeros(3, 4), "b": torch.ones(4), "n": torch.tensor(5)}
    local = {"w": torch.full((3, 4), 2.0), "b": torch.ones(4) + 1.0, "n": torch.tensor(7)}
    out = privatize(local, start, clip=1.0, sigma=0.0, generator=g)
    d = torch.cat([(out[k] - start[k]).reshape(-1) for k in ("w", "b")])
    raw = torch.cat([(local[k] - start[k]).reshape(-1) for k in ("w", "b")])
    assert float(d.norm()) == pytest.approx(1.0, rel=1e-6) and torch.allclose(d, raw / raw.norm(), atol=1e-6)
    assert int(out["n"]) == 7  # integer buffers travel as they are
    small = {"w": torch.full((3, 4), 0.01), "b": torch.ones(4)}
    assert torch.allclose(privatize(small, start, 1.0, 0.0, g)["w"], small["w"])  # below the bound: kept
    big = {"w": torch.zeros(400, 500)}
    noisy = privatize(big, big, clip=0.5, sigma=2.0, generator=g)["w"]
    assert float(noisy.std()) == pytest.approx(1.0, rel=0.02) and abs(float(noisy.mean())) < 0.01


def test_mask_and_positive_entries():
    g = torch.Generator().manual_seed(1)
    mask = {"w": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    start = {"w": torch.tensor([1.0, 0.0, 1.0, 0.0]), "var": torch.full((1000,), 1e-3)}
    local = {"w": torch.tensor([2.0, 0.0, 3.0, 0.0]), "var": torch.full((1000,), 1e-3)}
    out = privatize(local, start, 1.0, 5.0, g, mask, {"var"})
    assert out["w"][1] == 0 and out["w"][3] == 0 and out["w"][0] != 2.0  # pruned stay zero, kept are noised
    assert float(out["var"].min()) > 0.99e-5  # running variances stay positive (float32 of 1e-5)


@pytest.mark.parametrize("rounds,sigma,delta", [(1, 1.0, 1e-5), (20, 1.0, 1e-5), (50, 4.0, 1e-6)])
def test_epsilon_equals_the_closed_form_for_full_participation(rounds, sigma, delta):
    """Without sampling, the Gaussian mechanism's RDP is alpha / (2 sigma^2) per round
    (Mironov 2017); converted to (eps, delta) as in Balle et al. 2020."""
    a = np.array(ORDERS, dtype=float)
    rdp = rounds * a / (2 * sigma ** 2)
    eps = rdp - (np.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    assert dp_epsilon(rounds, sigma, delta, 1.0) == pytest.approx(float(eps.min()), rel=1e-9)
    assert dp_epsilon(rounds, sigma, delta, 0.5) < dp_epsilon(rounds, sigma, delta, 1.0)  # sampling helps
    assert dp_epsilon(rounds, 0.0, delta) == math.inf


def test_private_runs_report_epsilon_and_noise_changes_them(tmp_path, cache):
    over = tiny_overrides(cache, rounds=2)
    clipped = run_federated(load_config(None, over + ["privacy.clip=1.0"]), tmp_path / "c", progress=False).records
    noisy = run_federated(load_config(None, over + ["privacy.clip=1.0", "privacy.noise_multiplier=1.0"]),
                          tmp_path / "n", progress=False).records
    assert "dp_epsilon" not in clipped[0]
    eps = [r["dp_epsilon"] for r in noisy]
    assert eps[0] < eps[1] and eps[1] == pytest.approx(dp_epsilon(2, 1.0, 1e-5, 1.0))
    assert noisy[-1]["global"] != clipped[-1]["global"]
    fed = run_federated(load_config(None, tiny_overrides(cache, rounds=1, method="fedavg") +
                                    ["privacy.clip=0.5", "privacy.noise_multiplier=0.5"]),
                        tmp_path / "f", progress=False).records
    assert fed[0]["dp_epsilon"] == pytest.approx(dp_epsilon(1, 0.5, 1e-5))


def test_privacy_settings_are_validated(cache):
    with pytest.raises(PsflError, match="privacy.noise_multiplier: needs privacy.clip"):
        load_config(None, tiny_overrides(cache) + ["privacy.noise_multiplier=1.0"])
    with pytest.raises(PsflError, match="privacy.delta"):
        load_config(None, tiny_overrides(cache) + ["privacy.delta=0.5"])  # no noise: no (eps, delta)
