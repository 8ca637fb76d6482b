"""FedKD: loss weights follow its rule (1 / sum of both task losses), the SVD-compressed
updates keep the server and every client's synced mentee identical, and uploads shrink
as the energy threshold drops."""
import numpy as np
import pytest
import torch

from psfl.config import load_config
from psfl.fl.fedkd import fedkd_losses
from psfl.fl.pld import SemanticBridge, pld_losses
from psfl.methods import METHODS, build_env, options_for
from psfl.models.base import SCOutput

from test_runner import tiny_overrides


class Logits(torch.nn.Module):
    """'Classifier' returning fixed logits per call (to control the task losses)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = list(logits)

    def forward(self, x):
        return self.logits.pop(0)


def _out(seed: int) -> SCOutput:
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    x_hat = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    return SCOutput(S=S, X=S, Y=S, C=S * 0.5, x_hat=x_hat, grid=(2, 2))


def _kl(p_logits, q_logits):  # KL(softmax(q) || softmax(p)), batch mean, float64 by hand
    p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
    q = np.exp(q_logits) / np.exp(q_logits).sum(-1, keepdims=True)
    return float(np.mean(np.sum(q * (np.log(q) - np.log(p)), -1)))


def test_distillation_weight_is_one_over_the_sum_of_task_losses():
    lm = torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 0.1]], dtype=torch.float64)
    ls = torch.tensor([[0.5, 1.5, -0.5], [-1.0, 0.0, 2.0]], dtype=torch.float64)
    x, y = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 2])
    om, os_ = _out(1), _out(2)
    L = fedkd_losses(om, os_, x, y, Logits([lm, ls]), SemanticBridge(8, 8), eps=0.0)
    tm, ts = float(L.mentor["task"]), float(L.student["task"])
    assert float(L.mentor["dis"]) == pytest.approx(_kl(lm.numpy(), ls.numpy()) / (tm + ts), rel=1e-9)
    assert float(L.student["dis"]) == pytest.approx(_kl(ls.numpy(), lm.numpy()) / (tm + ts), rel=1e-9)
    # PLD divides by the *other* model's task loss instead: the two rules differ
    P = pld_losses(om, os_, x, y, Logits([lm, ls]), SemanticBridge(8, 8), eps=0.0)
    assert float(P.student["dis"]) == pytest.approx(_kl(ls.numpy(), lm.numpy()) / tm, rel=1e-9)
    assert float(P.student["dis"]) != pytest.approx(float(L.student["dis"]), rel=1e-3)


@pytest.fixture(scope="module")
def env(cache):
    return build_env(load_config(None, tiny_overrides(cache, rounds=3, method="fedkd")), progress=False)


def _round(m, env, rnd, states):
    payload, _ = m.broadcast(rnd, np.full(3, 10.0))
    ups = []
    from psfl.methods.base import Upload

    for cid in range(3):
        res = m.client_update(cid, states[cid], rnd, payload, 10.0, torch.Generator().manual_seed(rnd * 10 + cid))
        ups.append(Upload(cid, res.payload, env.data.volumes[cid]))
    m.aggregate(rnd, ups)
    return ups


def test_server_and_clients_stay_in_sync_and_bits_follow_the_threshold(env):
    cfg = env.cfg
    m = METHODS.get("fedkd")(env, options_for(cfg, "fedkd"))
    m.init_server()
    states = [m.init_client(c) for c in range(3)]
    _round(m, env, 0, states)
    _round(m, env, 1, states)
    payload, _ = m.broadcast(2, np.full(3, 10.0))
    synced, mask = m.receive(states[0], payload)
    assert mask is None
    for k in m.keys:  # the client's copy equals the server's global mentee exactly
        assert torch.equal(synced[k].float(), m.global_state[k].float()), k
    lo = METHODS.get("fedkd")(env, options_for(load_config(None, tiny_overrides(env.cfg.evaluator.cache_dir, 3,
                                                                                     "fedkd") + [
        "method_options.fedkd.t_start=0.5", "method_options.fedkd.t_end=0.5"]), "fedkd"))
    lo.init_server()
    lo_states = [lo.init_client(c) for c in range(3)]
    hi_up = _round(m, env, 2, states)
    _round(lo, env, 0, lo_states)
    lo_up = _round(lo, env, 1, lo_states)
    assert sum(len(u.payload) for u in lo_up) < sum(len(u.payload) for u in hi_up)
