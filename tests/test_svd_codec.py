"""FedKD's SVD codec: rank at an energy threshold against hand values, Eckart-Young error
bound, payload sizes against the layout, dense fallback, the threshold schedule."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psfl.codecs import CODECS, always, decode, decode_state, encode, encode_state, energy_threshold, svd_rank
from psfl.codecs.bits import read_varint
from psfl.utils.errors import PsflError

SETTINGS = settings(max_examples=60, deadline=None)
SIGMA = np.array([8.0, 4.0, 2.0, 1.0, 0.5])  # energies 64, 16, 4, 1, 0.25 of 85.25
M, N = 40, 30


def _orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q  # (rows, cols), orthonormal columns


def _known_spectrum() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W = P diag(SIGMA) Q^T in float64 with its factors (the oracle)."""
    p, q = _orthonormal(M, len(SIGMA), 1), _orthonormal(N, len(SIGMA), 2)
    return (p * SIGMA) @ q.T, p, q


def _rank_of(payload: bytes) -> int:
    assert payload[0] == 1, "expected the factor layout"
    return read_varint(payload, 1)[0]


def _rel_err(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    w64, h64 = w.double(), w_hat.double()
    return float(((w64 - h64) ** 2).sum() / (w64 ** 2).sum())


# ---------------------------------------------------------------------------- rank rule
@pytest.mark.parametrize("energy, rank", [(0.0, 0), (0.5, 1), (0.64, 1), (0.65, 2), (0.9, 2), (0.93, 3),
                                          (0.99, 3), (1.0, 3)])
def test_svd_rank_hand(energy, rank):
    # sigma = 3, 2, 1: cumulative energy shares 9/14 = 0.643, 13/14 = 0.929, 1
    assert svd_rank([3.0, 2.0, 1.0], energy) == rank


def test_svd_rank_edges():
    assert svd_rank(torch.zeros(4), 0.9) == 0  # zero matrix: nothing to send
    assert svd_rank([], 1.0) == 0
    assert svd_rank(torch.ones(400), 1.0) == 400  # T = 1 keeps everything despite rounding
    with pytest.raises(PsflError, match="outside"):
        svd_rank([1.0], 1.5)


@pytest.mark.parametrize("energy, rank", [(0.75, 1), (0.9, 2), (0.97, 3), (0.99, 4), (0.999, 5)])
def test_rank_and_reconstruction_of_a_known_spectrum(energy, rank):
    # shares: 64/85.25 = 0.751, 80/85.25 = 0.938, 84/85.25 = 0.985, 85/85.25 = 0.997, 1
    w64, p, q = _known_spectrum()
    w = torch.from_numpy(w64).float()
    payload = encode("svd", w, energy=energy)
    assert _rank_of(payload) == rank
    assert len(payload) == 1 + 1 + 4 * rank * (M + N)  # flag | varint r | (m + n) r float32
    oracle = (p[:, :rank] * SIGMA[:rank]) @ q[:, :rank].T  # Eckart-Young: the best rank-r matrix
    got = decode("svd", payload, (M, N)).double().numpy()
    assert np.abs(got - oracle).max() < 1e-5 * SIGMA[0]
    discarded = (SIGMA[rank:] ** 2).sum() / (SIGMA ** 2).sum()
    assert _rel_err(w, torch.from_numpy(got)) == pytest.approx(discarded, abs=1e-6)


def test_bits_decrease_with_the_threshold():
    w = torch.from_numpy(_known_spectrum()[0]).float()
    sizes = [len(encode("svd", w, energy=t)) for t in (0.999, 0.99, 0.97, 0.9, 0.75, 0.0)]  # ranks 5..0
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert sizes[-1] == 2  # rank 0: flag + varint 0


def test_conv_kernel_is_a_matrix_of_out_by_in_k_k():
    w = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0))  # viewed as (4, 72): r <= 4
    payload = encode("svd", w, energy=0.5)
    r = _rank_of(payload)
    assert 1 <= r <= 4 and len(payload) == 2 + 4 * r * (4 + 72)
    s = np.linalg.svd(w.double().reshape(4, 72).numpy(), compute_uv=False)
    assert _rel_err(w, decode("svd", payload, w.shape)) == pytest.approx((s[r:] ** 2).sum() / (s ** 2).sum(),
                                                                         abs=1e-6)


def test_two_byte_rank_varint():
    # every singular value 1 (W = P Q^T): T = 0.399 keeps ceil(0.399 * 400) = 160 of 400
    w = torch.from_numpy(_orthonormal(400, 400, 3) @ _orthonormal(400, 400, 4).T).float()
    payload = encode("svd", w, energy=0.399)
    assert _rank_of(payload) == 160 and len(payload) == 1 + 2 + 4 * 160 * 800


# ---------------------------------------------------------------------------- property
@st.composite
def matrices(draw):
    shape = draw(st.sampled_from([(2, 2), (3, 17), (24, 5), (16, 16), (8, 3, 3, 3), (5, 2, 2)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    decay = draw(st.sampled_from([0.0, 0.3, 1.0]))  # flat to fast-decaying spectra
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    w = w * torch.exp(-decay * torch.arange(shape[0], dtype=torch.float64)).reshape(-1, *[1] * (len(shape) - 1))
    return w.float()


def _oracle_ranks(s: np.ndarray, energy: float) -> set[int]:
    """Smallest r whose float64 cumulative share reaches ``energy`` (both answers at a
    rounding tie)."""
    cum = np.concatenate([[0.0], np.cumsum(s ** 2)])
    return {int(np.argmax(cum >= e * cum[-1])) for e in (min(1.0, energy * (1 + 1e-9)), energy * (1 - 1e-9))}


@SETTINGS
@given(matrices(), st.floats(0.0, 1.0))
def test_error_is_the_discarded_energy(w, energy):
    payload = encode("svd", w, energy=energy)
    w_hat = decode("svd", payload, w.shape)
    err = _rel_err(w, w_hat)
    assert err <= 1.0 - energy + 1e-5  # Eckart-Young: the error is the discarded share
    m, n = w.shape[0], w[0].numel()
    s = np.linalg.svd(w.double().reshape(m, n).numpy(), compute_uv=False)  # float64 oracle (numpy)
    ranks = _oracle_ranks(s, energy)
    if payload[0] == 0:  # dense: exact, and only where factors would not be smaller
        assert torch.equal(w_hat, w) and len(payload) == 1 + 4 * w.numel()
        assert max(ranks) * (m + n) >= m * n
    else:
        r = _rank_of(payload)
        assert r in ranks and r * (m + n) < m * n
        assert len(payload) == 1 + 1 + 4 * r * (m + n)  # r < 128: a one-byte varint
        assert err == pytest.approx((s[r:] ** 2).sum() / (s ** 2).sum(), abs=1e-5)


# ---------------------------------------------------------------------------- dense fallback
@pytest.mark.parametrize("t", [
    torch.tensor(3.5),  # 0-d
    torch.arange(7.0) - 2.25,  # 1-D (biases)
    torch.tensor([[1.0, -2.0], [3.0, 0.1]]),  # 2x2 at full rank: 2 * 4 floats >= 4
    torch.randn(3, 50, generator=torch.Generator().manual_seed(5)),  # full rank 3: 3 * 53 >= 150
    torch.zeros(0, 5),  # empty
    torch.tensor([[float("nan"), 1.0], [2.0, 3.0], [4.0, 5.0]]),  # non-finite: the runner reports it
])
def test_dense_fallback_round_trips_exactly(t):
    payload = encode("svd", t, energy=1.0)
    assert payload[0] == 0 and len(payload) == 1 + 4 * t.numel()
    back = decode("svd", payload, t.shape)
    assert back.shape == t.shape and torch.equal(back.view(torch.int32), t.view(torch.int32))


def test_zero_matrix_sends_rank_zero():
    payload = encode("svd", torch.zeros(10, 20), energy=0.98)
    assert payload == b"\x01\x00" and torch.equal(decode("svd", payload, (10, 20)), torch.zeros(10, 20))


def test_in_the_state_container():
    w = torch.from_numpy(_known_spectrum()[0]).float()
    state = {"w": w, "b": torch.arange(4.0)}
    out = decode_state(encode_state(state, always("svd", energy=0.9)), ["w", "b"])
    assert torch.equal(out["b"], state["b"]) and _rel_err(w, out["w"]) <= 0.1
    assert CODECS.get("svd").id == 5


def test_corrupt_payloads_raise():
    w = torch.from_numpy(_known_spectrum()[0]).float()
    payload = encode("svd", w, energy=0.9)
    for bad, match in [(b"", "flag"), (b"\x07" + payload[1:], "flag"), (payload + b"\x00", "trailing"),
                       (payload[:-4], "truncated"), (b"\x01\x1f", "rank 31 exceeds"),
                       (b"\x00" + payload[1:], "dense")]:
        with pytest.raises(PsflError, match=match):
            decode("svd", bad, (M, N))
    with pytest.raises(PsflError, match="no matrix view"):
        decode("svd", b"\x01\x00", (5,))


# ---------------------------------------------------------------------------- schedule
def test_energy_threshold_schedule_hand_values():
    # FedKD defaults T_start 0.95, T_end 0.98 over 10 rounds: 0.95 + 0.003 * (rnd + 1)
    assert energy_threshold(0, 10, 0.95, 0.98) == pytest.approx(0.953)
    assert energy_threshold(4, 10, 0.95, 0.98) == pytest.approx(0.965)
    assert energy_threshold(9, 10, 0.95, 0.98) == pytest.approx(0.98)
    assert energy_threshold(0, 1, 0.5, 0.9) == pytest.approx(0.9)
    ts = [energy_threshold(r, 7, 0.8, 0.99) for r in range(7)]
    assert ts == sorted(ts)
    for rnd, total in [(-1, 10), (10, 10), (0, 0)]:
        with pytest.raises(ValueError):
            energy_threshold(rnd, total, 0.95, 0.98)
