"""FedProx on the one local-training loop: mu = 0 is FedAvg exactly, mu > 0 pulls the
local model towards the broadcast, and the proximal term is mu/2 ||w - w_t||^2."""
import numpy as np
import pytest
import torch

from psfl.config import load_config
from psfl.fl.local import Trained
from psfl.methods import METHODS, build_env, options_for
from psfl.methods.fedprox import Proximal
from psfl.runners.inprocess import run_federated

from test_runner import strip_timing, tiny_overrides


def _numbers(records):
    return [{k: v for k, v in r.items() if k != "method"} for r in strip_timing(records)]


def test_mu_zero_is_fedavg_exactly(tmp_path, cache):
    fedavg = run_federated(load_config(None, tiny_overrides(cache, 2, "fedavg")), tmp_path / "a", progress=False)
    prox = run_federated(load_config(None, tiny_overrides(cache, 2, "fedprox") + ["method_options.fedprox.mu=0"]),
                         tmp_path / "b", progress=False)
    assert _numbers(prox.records) == _numbers(fedavg.records)


def test_positive_mu_pulls_the_local_model_towards_the_broadcast(cache):
    cfg = load_config(None, tiny_overrides(cache, 1, "fedprox") + ["train.local_steps=20", "train.lr=0.05"])
    env = build_env(cfg, progress=False)
    dist = {}
    for mu in (0.0, 1.0, 10.0):
        m = METHODS.get("fedprox")(env, options_for(load_config(None, tiny_overrides(cache, 1, "fedprox") + [
            f"method_options.fedprox.mu={mu}"])))
        m.init_server()
        payload, _ = m.broadcast(0, np.full(3, 10.0))
        start = {k: v.clone() for k, v in m.decode_down({}, payload).items()}
        m.client_update(0, m.init_client(0), 0, payload, 10.0, torch.Generator().manual_seed(0))
        local = m.net.state_dict()
        dist[mu] = float(sum((local[k].double() - start[k].double()).pow(2).sum() for k in start
                              if local[k].is_floating_point()))
    assert dist[10.0] < dist[1.0] < dist[0.0], dist


def test_proximal_term_hand_computation():
    net = torch.nn.Linear(3, 2)
    t = Trained.of("local", net, torch.optim.SGD(net.parameters(), lr=0.1))
    with torch.no_grad():
        net.weight.add_(0.5)
        net.bias.sub_(0.25)
    got = Proximal(0.3).extra_loss(t, None, torch.zeros(1), torch.zeros(1))["prox"]
    want = 0.5 * 0.3 * (6 * 0.5 ** 2 + 2 * 0.25 ** 2)  # 6 weights moved by 0.5, 2 biases by 0.25
    assert float(got.detach()) == pytest.approx(want, rel=1e-6)  # float32 sums of 8 terms
    assert Proximal(0.0).extra_loss(t, None, torch.zeros(1), torch.zeros(1)) == {}
