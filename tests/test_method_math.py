"""Methods' own server/client math on hand-made uploads (no data, no training): the call
sites of Eq. 10 and of STC's error accumulation, checked against float64 oracles."""
import pytest
import torch
from torch import nn

from psfl.config import load_config
from psfl.methods import METHODS, FederatedEnv
from psfl.methods.base import Upload
from psfl.methods.contenders import STCOptions
from psfl.methods.wire import encode_model


def _env(method: str, num_clients: int = 3) -> FederatedEnv:
    """What a method's constructor reads (config, presets, N_k), without data or evaluator."""
    from psfl.channel import create_channel
    from psfl.methods.base import ClientShards, Evaluators, ModelFactory

    cfg = load_config(None, [f'method="{method}"', "model.family='tiny'", f"data.num_clients={num_clients}"])
    return FederatedEnv(
        data=ClientShards([], [1] * num_clients),
        evaluators=Evaluators(nn.Identity(), nn.Identity(), torch.zeros(0), torch.zeros(0), None, 10),
        models=ModelFactory(cfg.seed, "tiny", 28, 1, create_channel("awgn"), torch.device("cpu")),
        seed=cfg.seed, cfg=cfg)


def _floating(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


@pytest.mark.parametrize("method", ["fedavg", "fedavg-csc", "psfl", "psfl-no-agp"])
def test_server_weights_uploads_by_num_samples(method):
    m = METHODS.get(method)(_env(method))
    m.init_server()
    template = _floating(m.global_state)
    values, sizes = [1.0, 3.0, 0.0], [1, 3, 4]  # Eq. 10: (1*1 + 3*3 + 4*0) / 8 = 1.25 (uniform: 4/3)
    uploads = [Upload(cid, encode_model({k: torch.full_like(v, c) for k, v in template.items()}), n)
               for cid, (c, n) in enumerate(zip(values, sizes))]
    m.aggregate(0, uploads)
    got = _floating(m.global_model().state_dict())
    assert got.keys() == template.keys()
    for k, v in got.items():  # 1.25 is exact in float32
        assert torch.equal(v, torch.full_like(v, 1.25)), k


# STC (Sattler et al.): what is not sent stays in the residual, so after any number of
# rounds  sum(sent) + residual == sum(updates)  on the client, and
# sum(broadcast updates) + server residual == sum(mean uploads)  on the server.
# The sums are of a few O(1) float32 values: 1e-5 absolute covers their rounding.
EF_TOL = dict(atol=1e-5, rtol=0.0)


def _random_update(keys, like, g):
    return {k: torch.randn(like[k].shape, generator=g) for k in keys}


def test_stc_client_accumulates_what_it_did_not_send():
    m = METHODS.get("stc")(_env("stc"), STCOptions(p=0.05))
    m.init_server()
    state = m.init_client(0)
    start = _floating(m.global_state)
    g = torch.Generator().manual_seed(0)
    total = {k: torch.zeros(start[k].shape, dtype=torch.float64) for k in m.keys}
    sent = {k: torch.zeros(start[k].shape, dtype=torch.float64) for k in m.keys}
    for _ in range(3):
        local = {k: start[k] + u for k, u in _random_update(m.keys, start, g).items()}
        got = m.decode_up(m.encode_up(0, state, local, start, g))
        for k in m.keys:
            total[k] += local[k].double() - start[k].double()
            sent[k] += got[k].double().view_as(total[k])
    assert max(float(r.abs().max()) for r in state["residual"].values()) > 0.1  # much is left behind
    for k in m.keys:
        torch.testing.assert_close(sent[k] + state["residual"][k].double(), total[k], **EF_TOL)


def test_stc_server_accumulates_what_it_did_not_broadcast():
    m = METHODS.get("stc")(_env("stc"), STCOptions(p=0.05))
    m.init_server()
    client = m.init_client(0)
    start = {k: v.double() for k, v in _floating(m.global_state).items()}
    m.decode_down(client, m.encode_down(0))  # round 0: the dense initial model
    g = torch.Generator().manual_seed(1)
    total = {k: torch.zeros_like(start[k]) for k in m.keys}
    for rnd in range(3):
        decoded = [_random_update(m.keys, start, g) for _ in range(3)]
        for k in m.keys:
            total[k] += sum(d[k].double() for d in decoded) / len(decoded)  # STC's server: plain mean
        m.apply_uploads(decoded, [Upload(cid, b"", 1) for cid in range(3)])
        synced = m.decode_down(client, m.encode_down(rnd + 1))  # what every client applies
        for k in m.keys:
            torch.testing.assert_close(synced[k], m.global_state[k])
    assert max(float(r.abs().max()) for r in m.server_residual.values()) > 0.1
    for k in m.keys:
        moved = m.global_state[k].double() - start[k]
        torch.testing.assert_close(moved + m.server_residual[k].double(), total[k], **EF_TOL)
