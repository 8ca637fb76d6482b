"""Channel statistics (Eq. 6): SNR, noise law, per-sample SNR, gradients, seeding, fading."""
from __future__ import annotations

import math

import pytest
import torch

from psfl.channel import (
    CHANNELS, EQUALIZERS, Rayleigh, Rician, create_channel, db_to_linear, power_normalize, to_complex,
    to_real,
)


def _x(B: int = 1000, L: int = 50, c: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(B, L, c, generator=g, dtype=torch.float64) + 0.5  # not unit power


def _db(ratio: float) -> float:
    return 10 * math.log10(ratio)


def test_db_conversion():
    assert db_to_linear(10.0) == pytest.approx(10.0)
    assert db_to_linear(0.0) == pytest.approx(1.0)
    assert db_to_linear(-10.0) == pytest.approx(0.1)
    assert torch.allclose(db_to_linear(torch.tensor([20.0, 3.0])), torch.tensor([100.0, 10 ** 0.3]))


def test_ten_db_gives_noise_variance_tenth():
    X, Y = create_channel("awgn")(_x(), 10.0, torch.Generator().manual_seed(1))
    assert float((Y - X).var()) == pytest.approx(0.1, rel=0.01)


def test_power_normalize_unit_power_per_sample():
    X = power_normalize(_x())
    assert torch.allclose(X.pow(2).mean(dim=(1, 2)), torch.ones(X.shape[0], dtype=X.dtype))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 25.0])
def test_awgn_measured_snr_and_gaussian_noise(snr_db):
    x = _x()  # 1e6 real symbols
    X, Y = create_channel("awgn")(x, snr_db, torch.Generator().manual_seed(2))
    N = (Y - X).flatten()
    measured = _db(float(X.pow(2).mean()) / float(N.pow(2).mean()))
    assert abs(measured - snr_db) < 0.1
    var = 1.0 / db_to_linear(snr_db)
    sd = math.sqrt(var)
    assert abs(float(N.mean())) < 5 * sd / math.sqrt(N.numel())
    assert float(N.var()) == pytest.approx(var, rel=0.01)
    z = (N - N.mean()) / N.std()
    assert abs(float(z.pow(3).mean())) < 0.02  # skewness 0
    assert abs(float(z.pow(4).mean()) - 3.0) < 0.05  # kurtosis 3


def test_awgn_noise_is_normal_by_quantiles():
    X, Y = create_channel("awgn")(_x(), 0.0, torch.Generator().manual_seed(3))
    N = (Y - X).flatten().float()
    normal = torch.distributions.Normal(0.0, 1.0)
    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        assert float(torch.quantile(N[:200_000], q)) == pytest.approx(float(normal.icdf(torch.tensor(q))), abs=0.02)


@pytest.mark.parametrize("name", ["awgn", "rayleigh", "rician"])
def test_per_sample_snr(name):
    B = 400
    snr = torch.tensor([0.0, 20.0]).repeat(B // 2).double()
    ch = create_channel(name) if name == "awgn" else create_channel(name, equalize="none")
    x = _x(B, 50, 40)
    g = torch.Generator().manual_seed(4)
    if name == "awgn":
        X, Y = ch(x, snr, g)
        N = Y - X
        noise_var = N.pow(2).mean(dim=(1, 2))
    else:
        out = ch.transmit(x, snr, g)
        noise_var = out.noise.abs().pow(2).mean(dim=1).mean(dim=1) / 2  # per real symbol
    assert float(noise_var[0::2].mean()) == pytest.approx(1.0, rel=0.03)
    assert float(noise_var[1::2].mean()) == pytest.approx(0.01, rel=0.03)
    with pytest.raises(ValueError, match="snr_db"):
        ch(x, torch.zeros(3), g)


@pytest.mark.parametrize("name", ["awgn", "rayleigh", "rician"])
def test_gradients_flow_through_channel(name):
    x = torch.randn(4, 8, 6, requires_grad=True)
    X, Y = create_channel(name)(x, 5.0, torch.Generator().manual_seed(5))
    (Y.pow(2).sum() + X.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CHANNELS.names())
def test_same_seed_same_output(name):
    x = torch.randn(8, 10, 4)
    a = create_channel(name)(x, 3.0, torch.Generator().manual_seed(6))
    b = create_channel(name)(x, 3.0, torch.Generator().manual_seed(6))
    c = create_channel(name)(x, 3.0, torch.Generator().manual_seed(7))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_complex_pairing_round_trip():
    x = torch.arange(24.0).view(2, 3, 4)
    z = to_complex(x)
    assert z.shape == (2, 3, 2) and z[0, 0, 1] == complex(2.0, 3.0)
    assert torch.equal(to_real(z), x)
    with pytest.raises(ValueError, match="even"):
        to_complex(torch.zeros(2, 3))


@pytest.mark.parametrize("ch", [Rayleigh(), Rician(k_factor=0.0), Rician(k_factor=4.0), Rician(k_factor=10.0, los_phase=1.0)])
def test_fading_gain_unit_mean_power(ch):
    h = ch.draw_gain(200_000, torch.Generator().manual_seed(8), torch.float64, torch.device("cpu"))
    assert float(h.abs().pow(2).mean()) == pytest.approx(1.0, abs=0.01)


def test_rayleigh_gain_is_circular_gaussian():
    h = Rayleigh().draw_gain(200_000, torch.Generator().manual_seed(9), torch.float64, torch.device("cpu"))
    assert abs(float(h.real.mean())) < 0.01 and abs(float(h.imag.mean())) < 0.01
    assert float(h.real.var()) == pytest.approx(0.5, rel=0.02)
    assert float(h.imag.var()) == pytest.approx(0.5, rel=0.02)
    assert float((h.abs().pow(2) > 1.0).double().mean()) == pytest.approx(math.exp(-1), abs=0.005)  # |h|^2 ~ Exp(1)


def test_rician_line_of_sight_mean():
    K = 4.0
    h = Rician(k_factor=K).draw_gain(200_000, torch.Generator().manual_seed(10), torch.float64, torch.device("cpu"))
    assert float(h.real.mean()) == pytest.approx(math.sqrt(K / (K + 1)), abs=0.01)
    assert float(h.var()) == pytest.approx(1 / (K + 1), rel=0.02)


@pytest.mark.parametrize("name", ["rayleigh", "rician"])
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 25.0])
def test_fading_average_received_snr(name, snr_db):
    ch = create_channel(name, equalize="none")
    out = ch.transmit(_x(20_000, 25, 4), snr_db, torch.Generator().manual_seed(11))  # 1e6 complex symbols
    Xc = to_complex(out.X)
    signal = (out.h.view(-1, 1, 1) * Xc).abs().pow(2).mean()
    measured = _db(float(signal) / float(out.noise.abs().pow(2).mean()))
    assert abs(measured - snr_db) < 0.1
    assert torch.allclose(out.Y, to_real(out.h.view(-1, 1, 1) * Xc + out.noise))


@pytest.mark.parametrize("equalize", EQUALIZERS.names())
def test_equalizers_match_hand_computation(equalize):
    out = Rayleigh(equalize=equalize).transmit(_x(64, 10, 6), 7.0, torch.Generator().manual_seed(12))
    h = out.h.view(-1, 1, 1)
    Xc = to_complex(out.X)
    raw = h * Xc + out.noise
    s2 = 2 / db_to_linear(7.0)  # noise variance per complex symbol
    expected = {"none": raw, "zf": Xc + out.noise / h, "mmse": h.conj() * raw / (h.abs() ** 2 + s2 / 2)}[equalize]
    assert torch.allclose(to_complex(out.Y), expected)


def test_equalized_fading_recovers_symbols_at_high_snr():
    x = _x(256, 10, 8)
    for eq in ("zf", "mmse"):
        X, Y = Rayleigh(equalize=eq)(x, 60.0, torch.Generator().manual_seed(13))
        assert float((Y - X).pow(2).mean()) < 1e-2


def test_unknown_names_are_clear():
    with pytest.raises(KeyError, match="known: awgn"):
        create_channel("awgm")
    with pytest.raises(KeyError, match="equalizer"):
        Rayleigh(equalize="foo")
    with pytest.raises(ValueError, match="K-factor"):
        Rician(k_factor=-1)
