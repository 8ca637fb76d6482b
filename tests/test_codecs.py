"""Codecs: exact round trips (property tests), chosen variants, sizes vs formulas, state container."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from psfl.codecs import (CODECS, QSGD_VARIANTS, SPARSE_VARIANTS, always, decode, decode_qsgd, decode_state, encode,
                         encode_qsgd, encode_state, payload_bits, qsgd_dequantize, qsgd_quantize,
                         qsgd_variant_nbytes, sparse_variant_nbytes, stc_expected_bits, stc_golomb_bits,
                         stc_golomb_parameter, stc_header_bytes, ternary2bit_nbytes, topk_ternarize,
                         ttq_dequantize, ttq_quantize)
from psfl.codecs.bits import BitReader, BitWriter, gamma_bits, read_varint, rice_bits, varint
from psfl.utils.errors import PsflError

SETTINGS = settings(max_examples=100, deadline=None)
shapes = st.lists(st.integers(1, 7), min_size=0, max_size=4).map(tuple)  # 0-d .. 4-d
densities = st.sampled_from([0.0, 1e-3, 0.5, 1.0])
seeds = st.integers(0, 2**31 - 1)


def _sparse_tensor(shape, density, seed) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    vals = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)
    vals[rng.random(n) >= density] = 0.0
    return torch.from_numpy(vals.astype(np.float32)).reshape(shape)


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ---------------------------------------------------------------------------- bit layer
def test_varint_hand():
    assert varint(0) == b"\x00" and varint(127) == b"\x7f" and varint(300) == b"\xac\x02"
    assert read_varint(b"\xff\xac\x02", 1) == (300, 3)


def test_gamma_and_rice_lengths_hand():
    w = BitWriter()
    w.gamma(np.array([1, 5]))  # 1 -> 1 bit; 5 = 101b -> 2 + 1 + 2 = 5 bits
    assert w.nbits == 6 == gamma_bits(np.array([1, 5]))
    w = BitWriter()
    w.rice(np.array([0, 9]), 2)  # 0 -> 0|00 (3 bits); 9 = 2*4 + 1 -> 110|01 (5 bits)
    assert w.nbits == 8 == rice_bits(np.array([0, 9]), 2)
    # two-stream layout: unary parts "0" "110" first, then remainders "00" "01"
    assert w.getvalue() == bytes([0b01100001])


@SETTINGS
@given(st.lists(st.integers(1, 2**40), min_size=0, max_size=200), st.integers(0, 20), st.integers(1, 45))
def test_bit_codes_round_trip(xs, k, width):
    x = np.array(xs, dtype=np.int64)
    xf = x & ((1 << width) - 1)
    w = BitWriter()
    w.gamma(x)
    w.rice(x >> 25, k)  # keep unary parts short
    w.fixed(xf, width)
    w.bits(x & 1)
    assert w.nbits == gamma_bits(x) + rice_bits(x >> 25, k) + x.size * (width + 1)
    payload = w.getvalue()
    assert len(payload) == (w.nbits + 7) // 8
    r = BitReader(payload)
    assert np.array_equal(r.gamma(x.size), x)
    assert np.array_equal(r.rice(x.size, k), x >> 25)
    assert np.array_equal(r.fixed(x.size, width), xf)
    assert np.array_equal(r.bits(x.size), x & 1)
    assert r.bytes_consumed == len(payload)


# ---------------------------------------------------------------------------- dense
@SETTINGS
@given(shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=st.floats(width=32))))
def test_dense_round_trip_bitwise(a):
    t = torch.from_numpy(a.copy())
    payload = encode("dense", t)
    assert len(payload) == 4 * t.numel()
    assert _bitwise_equal(decode("dense", payload, t.shape), t)  # NaN, inf, -0.0 included


def test_dense_is_little_endian_float32():
    assert encode("dense", torch.tensor([1.0, -2.0])) == np.array([1.0, -2.0], "<f4").tobytes()


# ---------------------------------------------------------------------------- sparse
@SETTINGS
@given(shapes, densities, seeds)
def test_sparse_exact_and_cheapest(shape, density, seed):
    t = _sparse_tensor(shape, density, seed)
    sizes = sparse_variant_nbytes(t)
    payload = encode("sparse", t)
    assert torch.equal(decode("sparse", payload, t.shape), t)
    for v in SPARSE_VARIANTS:  # every variant is exact and its predicted size is its real size
        pv = encode("sparse", t, variant=v)
        assert len(pv) == sizes[v]
        assert torch.equal(decode("sparse", pv, t.shape), t)
    assert len(payload) == min(sizes.values())
    assert SPARSE_VARIANTS[payload[0]] == min(SPARSE_VARIANTS, key=lambda v: sizes[v])


@SETTINGS
@given(shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=st.one_of(
    st.just(0.0), st.floats(width=32, allow_nan=False)))))
def test_sparse_exact_on_arbitrary_values(a):
    t = torch.from_numpy(a.copy())
    assert torch.equal(decode("sparse", encode("sparse", t), t.shape), t)


def test_sparse_variant_choice_by_density():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g)
    very_sparse = x * (torch.rand(x.shape, generator=g) < 0.001)
    half = x * (torch.rand(x.shape, generator=g) < 0.5)
    assert SPARSE_VARIANTS[encode("sparse", very_sparse)[0]] in ("gamma", "rice")
    assert SPARSE_VARIANTS[encode("sparse", half)[0]] == "bitmask"
    # bitmask size by hand: flag + numel/8 + 4 * nnz
    assert len(encode("sparse", half, variant="bitmask")) == 1 + 100_000 // 8 + 4 * int((half != 0).sum())
    # fixed positions by hand: flag + varint(nnz) + ceil(nnz * 17 / 8) + 4 * nnz (ceil(log2 1e5) = 17)
    nnz = int((very_sparse != 0).sum())
    assert len(encode("sparse", very_sparse, variant="positions")) == (
        1 + len(varint(nnz)) + math.ceil(nnz * 17 / 8) + 4 * nnz)


# ---------------------------------------------------------------------------- stc
def test_stc_golomb_parameter_hand():
    # log(phi - 1) = -0.48121; p = 0.01: ratio 47.88 -> log2 5.58 -> b* = 6; p = 0.001: 480.9 -> 8.91 -> 9
    assert stc_golomb_parameter(0.01) == 6
    assert stc_golomb_parameter(0.001) == 9
    # p = 0.2: 0.48121 / 0.22314 = 2.157 -> log2 1.11 -> b* = 2; p = 0.5: 0.694 -> log2 -0.53 -> b* = 0
    assert stc_golomb_parameter(0.2) == 2
    assert stc_golomb_parameter(0.5) == 0 and stc_golomb_parameter(1.0) == 0
    p, b = 0.01, 6
    assert stc_golomb_bits(1000, 100_000) == pytest.approx(1000 * (b + 1 / (1 - (1 - p) ** 2**b)))


@SETTINGS
@given(shapes, st.sampled_from([0.0, 1e-3, 0.01, 0.5, 1.0]), seeds)
def test_stc_round_trip(shape, p, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    t, mu = topk_ternarize(x, p)
    payload = encode("stc", t)
    assert torch.equal(decode("stc", payload, t.shape), t)
    assert payload[:4] == np.array([mu], "<f4").tobytes()


@pytest.mark.parametrize("numel", [100_000, 1_000_000])
@pytest.mark.parametrize("p", [0.01, 0.001])
def test_stc_size_matches_golomb_formula(numel, p):
    g = torch.Generator().manual_seed(numel + int(1 / p))
    t, _ = topk_ternarize(torch.randn(numel, generator=g), p)
    n = int((t != 0).sum())
    payload = encode("stc", t)
    formula = stc_golomb_bits(n, numel) + n + 8 * stc_header_bytes(n)
    assert formula == pytest.approx(stc_expected_bits(n, numel))
    assert payload_bits(payload) == pytest.approx(formula, rel=0.02)
    assert torch.equal(decode("stc", payload, t.shape), t)


def test_stc_rejects_non_ternary():
    with pytest.raises(PsflError, match="not ternary"):
        encode("stc", torch.tensor([0.0, 1.0, -2.0]))


# ---------------------------------------------------------------------------- ternary2bit
@SETTINGS
@given(shapes, st.sampled_from([0.0, 0.05, 0.7, 1.0]), st.booleans(), seeds)
def test_ternary2bit_round_trip_and_size(shape, thr, symmetric, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    codes, sp, sn = ttq_quantize(w, thr, symmetric=symmetric)
    t = ttq_dequantize(codes, sp, sn)
    payload = encode("ternary2bit", t)
    assert torch.equal(decode("ternary2bit", payload, t.shape), t)
    has_pos, has_neg = bool((codes > 0).any()), bool((codes < 0).any())
    one_scale = symmetric or not (has_pos and has_neg) or sp == sn
    assert len(payload) == ternary2bit_nbytes(t.numel(), one_scale)


def test_ternary2bit_hand_layout():
    t = torch.tensor([0.5, 0.0, -0.25, 0.5, -0.25])  # codes + 0 - + - -> 01 00 10 01 | 10 (pad)
    payload = encode("ternary2bit", t)
    assert payload[0] == 1 and payload[1:9] == np.array([0.5, 0.25], "<f4").tobytes()
    assert payload[9:] == bytes([0b01001001, 0b10000000])
    assert torch.equal(decode("ternary2bit", payload, (5,)), t)


# ---------------------------------------------------------------------------- qsgd
@SETTINGS
@given(shapes, st.sampled_from([1, 2, 3, 7, 255, 1000]), st.floats(1e-3, 1e3), seeds)
def test_qsgd_round_trip_and_cheapest(shape, s, scale, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g) * scale
    norm, signs, levels = qsgd_quantize(v, s, g)
    q = qsgd_dequantize(norm, signs, levels, s)
    sizes = qsgd_variant_nbytes(levels, s)
    payload = encode("qsgd", q, s=s, norm=norm)
    assert _bitwise_equal(decode("qsgd", payload, q.shape), q)
    assert len(payload) == min(sizes.values())
    for variant in QSGD_VARIANTS:
        pv = encode_qsgd(norm, signs, levels, s, variant=variant)
        assert len(pv) == sizes[variant]
        n2, s2, l2, ss = decode_qsgd(pv, q.numel())
        assert (n2, ss) == (norm, s)
        assert torch.equal(l2, levels.reshape(-1)) and torch.equal((s2 * l2), (signs * levels).reshape(-1).int())


def test_qsgd_fixed_size_hand():
    levels = torch.tensor([0, 3, 1, 0, 2])
    signs = torch.tensor([1, -1, 1, -1, 1], dtype=torch.int8)
    # s = 3 -> 2 bits per level (10 bits) + 3 sign bits = 13 bits -> 2 bytes; + flag + varint(3) + norm
    payload = encode_qsgd(1.5, signs, levels, 3, variant="fixed")
    assert len(payload) == 1 + 1 + 4 + 2
    # levels 00 11 01 00 10, then the signs of the non-zero levels (indices 1, 2, 4: - + +) -> 1 0 0
    assert payload[6:] == bytes([0b00110100, 0b10100000])


def test_qsgd_rejects_unquantised_tensor():
    with pytest.raises(PsflError, match="not a QSGD"):
        encode("qsgd", torch.tensor([0.3, -0.1]), s=4, norm=1.0)


# ---------------------------------------------------------------------------- state container
def _mixed_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, 3, 3, generator=g)
    pruned = x * (torch.rand(x.shape, generator=g) < 0.2)
    stc, _ = topk_ternarize(torch.randn(40, 8, generator=g), 0.05)
    codes, sp, sn = ttq_quantize(torch.randn(16, 4, generator=g), 0.05)
    v = torch.randn(300, generator=g)
    norm, signs, levels = qsgd_quantize(v, 15, g)
    state = {"scalar": torch.tensor(3.25), "bias": torch.randn(7, generator=g), "conv": pruned, "fc": stc,
             "tern": ttq_dequantize(codes, sp, sn), "q": qsgd_dequantize(norm, signs, levels, 15),
             "empty": torch.zeros(0, 4)}
    choice = {"scalar": ("dense", {}), "bias": ("dense", {}), "conv": ("sparse", {}), "fc": ("stc", {}),
              "tern": ("ternary2bit", {}), "q": ("qsgd", {"s": 15, "norm": norm}), "empty": ("sparse", {})}
    return state, choice


def test_state_round_trip_mixed_codecs():
    state, choice = _mixed_state()
    payload = encode_state(state, lambda k, t: choice[k])
    out = decode_state(payload, list(state))
    assert list(out) == list(state)
    for k in state:
        assert out[k].shape == state[k].shape and torch.equal(out[k], state[k]), k
    # Z = 8 * len(bytes): per entry exactly id + ndim + shape varints + length varint + payload
    expected = 0
    for k, t in state.items():
        name, params = choice[k]
        n = len(CODECS.get(name).encode(t, **params))
        expected += 1 + len(varint(t.dim())) + sum(len(varint(d)) for d in t.shape) + len(varint(n)) + n
    assert len(payload) == expected and payload_bits(payload) == 8 * expected


def test_state_list_input_and_always():
    ts = [torch.arange(6.0).reshape(2, 3), torch.tensor([0.0, 0.0, 5.0])]
    payload = encode_state(ts, always("sparse"))
    out = decode_state(payload, ["a", "b"])
    assert torch.equal(out["a"], ts[0]) and torch.equal(out["b"], ts[1])


def test_state_corrupt_payloads_raise_clear_errors():
    state, choice = _mixed_state(1)
    payload = encode_state(state, lambda k, t: choice[k])
    keys = list(state)
    with pytest.raises(PsflError, match="trailing"):
        decode_state(payload + b"\x00", keys)
    with pytest.raises(PsflError):
        decode_state(payload[:-3], keys)
    with pytest.raises(PsflError, match="unknown codec id"):
        decode_state(b"\xee" + payload[1:], keys)


def test_registry_names_and_ids():
    assert CODECS.names() == ["dense", "qsgd", "sparse", "stc", "svd", "ternary2bit"]
    assert len({CODECS.get(n).id for n in CODECS.names()}) == 6
