"""Compression operators: STC top-k ternarisation, FTTQ, QSGD, error feedback."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psfl.codecs import (ef_residual, ef_step, qsgd_dequantize, qsgd_quantize, topk_k, topk_ternarize,
                         ttq_dequantize, ttq_quantize)
from psfl.utils.errors import PsflError

SETTINGS = settings(max_examples=100, deadline=None)


# ---------------------------------------------------------------------------- STC
def test_topk_ternarize_hand():
    x = torch.tensor([0.1, -3.0, 2.0, -0.5, 1.0])
    t, mu = topk_ternarize(x, 0.4)  # k = 2: -3 and 2 kept, mu = 2.5
    assert mu == 2.5
    assert torch.equal(t, torch.tensor([0.0, -2.5, 2.5, 0.0, 0.0]))


def test_topk_k_rule():
    assert topk_k(1000, 0.0) == 1 and topk_k(1000, 0.01) == 10 and topk_k(1000, 1.0) == 1000
    assert topk_k(10, 0.25) == 3  # round half up
    with pytest.raises(PsflError):
        topk_k(10, 1.5)


@SETTINGS
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_topk_keeps_exactly_k_largest(shape, p, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    t, mu = topk_ternarize(x, p)
    k = topk_k(x.numel(), p)
    kept = t != 0
    assert int(kept.sum()) == k
    assert torch.equal(torch.sign(t[kept]), torch.sign(x[kept]))
    assert torch.all(t[kept].abs() == mu)
    # float64 oracle; mu is a float32 mean of up to 9^4 terms (~1e-6 relative error)
    assert mu == pytest.approx(float(x[kept].double().abs().mean()), rel=1e-5)
    if k < x.numel():  # every kept magnitude >= every dropped one
        assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())


# ---------------------------------------------------------------------------- FTTQ
def test_ttq_threshold_hand():
    w = torch.tensor([0.5, -1.0, 0.05, -0.04, 0.2, 0.0, 0.1, -0.1])
    codes, sp, sn = ttq_quantize(w, 0.1)  # Delta = 0.1 * max|w| = 0.1; strict inequalities
    assert codes.tolist() == [1, -1, 0, 0, 1, 0, 0, 0]
    assert sp == pytest.approx(0.35) and sn == pytest.approx(1.0)
    assert torch.allclose(ttq_dequantize(codes, sp, sn), torch.tensor([0.35, -1.0, 0, 0, 0.35, 0, 0, 0]))
    codes, sp, sn = ttq_quantize(w, 0.1, symmetric=True)
    assert sp == sn == pytest.approx((0.5 + 1.0 + 0.2) / 3)
    codes, sp, sn = ttq_quantize(w, 0.3)  # Delta = 0.3: only 0.5 and -1.0 survive
    assert codes.tolist() == [1, -1, 0, 0, 0, 0, 0, 0]
    codes, sp, sn = ttq_quantize(w, 1.0)  # nothing strictly above max|w|
    assert not codes.any() and sp == sn == 0.0


# ---------------------------------------------------------------------------- QSGD
def test_qsgd_levels_are_neighbours_and_seeded():
    v = torch.randn(500, generator=torch.Generator().manual_seed(0))
    s = 4
    norm, signs, levels = qsgd_quantize(v, s, torch.Generator().manual_seed(1))
    r = v.abs() / norm * s
    assert norm == pytest.approx(float(v.double().norm()), rel=1e-5)  # float32 norm of 500 terms vs float64
    assert torch.all((levels == torch.floor(r).int()) | (levels == torch.ceil(r).int()))
    assert int(levels.min()) >= 0 and int(levels.max()) <= s
    assert torch.equal(signs, torch.sign(v).to(torch.int8))
    again = qsgd_quantize(v, s, torch.Generator().manual_seed(1))
    assert torch.equal(again[2], levels)


def test_qsgd_unbiased():
    v = torch.tensor([0.3, -1.2, 0.05, 2.0, -0.7, 0.0, 1.1, -0.25])
    s, reps = 2, 4000
    g = torch.Generator().manual_seed(7)
    acc = torch.zeros_like(v)
    for _ in range(reps):
        norm, signs, levels = qsgd_quantize(v, s, g)
        acc += qsgd_dequantize(norm, signs, levels, s)
    mean = acc / reps
    # per-element std of one draw <= norm / (2 s); 5 sigma of the mean
    tol = 5 * float(v.norm()) / (2 * s) / reps**0.5
    assert torch.all((mean - v).abs() < tol), (mean, v, tol)


def test_qsgd_zero_vector():
    norm, signs, levels = qsgd_quantize(torch.zeros(5), 3, torch.Generator())
    assert norm == 0.0 and not levels.any()
    assert torch.equal(qsgd_dequantize(norm, signs, levels, 3), torch.zeros(5))


# ---------------------------------------------------------------------------- error feedback
def test_error_feedback_conserves_mass():
    g = torch.Generator().manual_seed(3)
    residual = None
    sent = torch.zeros(50)
    total = torch.zeros(50)
    for _ in range(20):
        u = torch.randn(50, generator=g)
        total += u
        compressed, residual = ef_step(u, residual, lambda x: topk_ternarize(x, 0.1)[0])
        sent += compressed
    # everything not yet sent sits in the residual
    assert torch.allclose(sent + residual, total, atol=1e-4)
    u, r, c = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]), torch.tensor([1.5, 0.0])
    assert torch.equal(ef_residual(u, r, c), torch.tensor([0.0, 1.0]))
