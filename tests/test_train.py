"""Central training: the task loss (Eq. 8 + Eqs. 15/16) by hand, gradient routing through
the frozen evaluator, learning, and a full `run_central` on tiny synthetic data."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from psfl import data as D
from psfl.evaluate import create_classifier, fit_classifier, freeze
from psfl.models import create_model, load_model_checkpoint
from psfl.models.base import SCOutput
from psfl.utils.device import seeded
from psfl.utils.errors import PsflError
from psfl.central.train import CentralConfig, fit, format_central_table, run_central, sample_snr, task_loss, train_step


def synthetic_dataset(n_train: int, n_test: int, seed: int = 0) -> D.ArrayDataset:
    """28 px grey uint8 images: class c (of 4) is a bright square in quadrant c, on noise."""
    rng = np.random.default_rng(seed)

    def arrays(n):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 90, (n, 28, 28)).astype(np.uint8)
        for c in range(4):
            r, q = divmod(c, 2)
            x[y == c, r * 14 + 3:r * 14 + 11, q * 14 + 3:q * 14 + 11] = 230
        return x, y.astype(np.int64)

    (xtr, ytr), (xte, yte) = arrays(n_train), arrays(n_test)
    return D.ArrayDataset("fashion_mnist", xtr, ytr, xte, yte, num_classes=10, source="synthetic")


class FixedLogits(nn.Module):
    """'Evaluator' returning given logits (checks that task_loss scores x_hat)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x
        return self.logits


def test_task_loss_matches_hand_computation():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [0.0, 0.0]]]])  # (2, 1, 2, 2)
    x_hat = torch.tensor([[[[0.5, 1.0], [0.5, 0.0]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    out = SCOutput(S=x, X=x, Y=x, C=x, x_hat=x_hat, grid=(1, 1))
    ev = FixedLogits(logits)
    terms = task_loss(out, x, y, ev)
    assert ev.seen is x_hat
    ce = (-(2 - math.log(math.exp(2) + 2)) - (1 - math.log(1 + math.e + math.exp(3)))) / 2  # Eq. 8, batch mean
    mse = (0.25 + 0 + 0 + 0.25 + 0 + 1 + 0 + 0) / 8
    # float32 log-softmax of logits <= 3: a few 1e-7 absolute per row on any CPU; the squared
    # errors are exact in float32
    assert float(terms["ce"]) == pytest.approx(ce, abs=2e-6)
    assert float(terms["mse"]) == pytest.approx(mse, abs=2e-6)
    assert float(terms["loss"]) == pytest.approx(ce + mse, abs=2e-6)
    pure = task_loss(out, x, y, ev, mse_scale=2.0, ce_weight=0.0)  # deep JSCC's objective: MSE alone
    assert float(pure["loss"]) == pytest.approx(2 * mse, abs=2e-6) and float(pure["ce"]) == pytest.approx(ce, abs=2e-6)
    assert float(task_loss(out, x, y, ev, ce_weight=0.5)["loss"]) == pytest.approx(0.5 * ce + mse, abs=2e-6)


def test_sample_snr_fixed_or_per_sample_range():
    g = torch.Generator().manual_seed(0)
    assert sample_snr(10, 4, g) == 10.0
    s = sample_snr((0.0, 25.0), 1000, g)
    assert s.shape == (1000,) and float(s.min()) >= 0 and float(s.max()) <= 25 and 10 < float(s.mean()) < 15


@pytest.mark.parametrize("preset", ["tiny-M", "tiny-CSC"])
def test_gradients_reach_sc_model_not_evaluator(preset):
    ev = freeze(create_classifier("cnn", 1, 10, 28))
    torch.manual_seed(0)
    model = create_model(preset, img_size=28, in_chans=1)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    out = model(x, 10.0, generator=torch.Generator().manual_seed(0))
    task_loss(out, x, y, ev)["loss"].backward()
    assert all(p.grad is None for p in ev.parameters())
    missing = [n for n, p in model.named_parameters()
               if n != "mask_token" and (p.grad is None or not torch.isfinite(p.grad).all())]  # MAE masking only
    assert not missing


def test_train_steps_lower_the_loss():
    torch.manual_seed(0)
    p = D.prepare(synthetic_dataset(256, 8), "native")
    net = create_classifier("cnn", 1, 10, 28)
    fit_classifier(net, p.x_train, p.y_train, 2, 32, 3e-3, torch.Generator().manual_seed(0), progress=False)
    ev = freeze(net)
    model = create_model("tiny-M", img_size=28, in_chans=1)
    x, y = p.x_train[:32], p.y_train[:32]

    def eval_loss() -> float:  # same noise draw every time
        with torch.no_grad():
            return float(task_loss(model(x, 20.0, generator=torch.Generator().manual_seed(5)), x, y, ev)["loss"])

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    steps = [train_step(model, ev, x, y, 10.0, opt, g) for _ in range(25)]
    assert set(steps[0]) == {"ce", "mse", "loss"}
    assert eval_loss() < 0.85 * before


def test_fit_history_and_subsample():
    torch.manual_seed(0)
    ev = freeze(create_classifier("cnn", 1, 10, 28))
    model = create_model("tiny-M", img_size=28, in_chans=1)
    prepared = D.prepare(synthetic_dataset(96, 8), "native")
    hist = fit(model, ev, prepared, epochs=2, batch_size=16, lr=3e-3, optimizer="adam", train_snr_db=(0.0, 20.0),
               seed=0, max_samples=48, progress=False)
    assert [h["epoch"] for h in hist] == [0, 1]
    assert all(h["samples_per_s"] > 0 and math.isfinite(h["loss"]) for h in hist)
    assert hist[0]["loss"] == pytest.approx(hist[0]["ce"] + hist[0]["mse"], rel=1e-6)
    with pytest.raises(KeyError, match="optimizer"):
        fit(model, ev, prepared, epochs=1, optimizer="lion", progress=False)


def test_run_central_end_to_end(tmp_path, monkeypatch):
    ds = synthetic_dataset(96, 40)
    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: ds)
    cfg = CentralConfig(model="tiny-CSC", epochs=1, batch_size=16, evaluator_epochs=1, test_snr_db=(0.0, 20.0),
                        evaluator_cache_dir=str(tmp_path / "cache"))
    r = run_central(cfg, tmp_path / "run", progress=False)
    assert [row["snr_db"] for row in r.table] == [0.0, 20.0]
    assert all(0 <= row["accuracy"] <= 1 and math.isfinite(row["psnr"]) for row in r.table)
    assert r.samples_per_s > 0 and r.params > 0
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["config"]["model"] == "tiny-CSC" and len(saved["table"]) == 2
    assert saved["config"]["device"] == "cpu" and saved["device"]["device"] == "cpu" and saved["device"]["torch"]
    assert (tmp_path / "run" / "eval.csv").read_text().startswith("snr_db,accuracy,psnr,ssim")
    model = load_model_checkpoint(r.checkpoint)
    assert model.checkpoint_config["dataset"] == "fashion_mnist"
    assert model.checkpoint_config["input_preset"] == "native"
    assert "SNR (dB)" in format_central_table(r)


def test_cosine_schedule_sets_each_step_and_ends_near_zero():
    ev = freeze(create_classifier("cnn", 1, 10, 28))
    model = create_model("tiny-CSC", img_size=28, in_chans=1)
    prepared = D.prepare(synthetic_dataset(64, 8), "native")
    hist = fit(model, ev, prepared, epochs=2, batch_size=16, lr=1e-2, optimizer="adam", seed=0, progress=False,
               lr_schedule="cosine")
    # 4 steps per epoch, 8 in all: the last step of epoch 1 is step 3, of epoch 2 step 7
    assert hist[0]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 8)))
    assert hist[1]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    flat = fit(model, ev, prepared, epochs=1, batch_size=16, lr=1e-2, optimizer="adam", seed=0, progress=False)
    assert flat[0]["lr"] == 1e-2
    with pytest.raises(PsflError, match="lr schedule"):
        fit(model, ev, prepared, epochs=1, lr_schedule="step", progress=False)


def test_interrupted_fit_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A run killed mid-epoch continues from its last finished epoch and ends where an
    uninterrupted one ends (optimiser moments, shuffling and channel noise included)."""
    import psfl.central.train as T

    ev = freeze(create_classifier("cnn", 1, 10, 28))
    prepared = D.prepare(synthetic_dataset(64, 8), "native")
    kw = dict(epochs=3, batch_size=16, lr=3e-3, optimizer="adam", train_snr_db=(0.0, 20.0), seed=2,
              progress=False, lr_schedule="cosine", state_key="run-a")

    def fresh():
        with seeded(0):
            return create_model("tiny-CSC", img_size=28, in_chans=1)

    whole = fresh()
    h_whole = fit(whole, ev, prepared, state_path=tmp_path / "a.pt", **kw)
    real_step, calls = T.train_step, {"n": 0}

    def dies_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # the second step of the second epoch
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(T, "train_step", dies_in_epoch_2)
    cut = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(cut, ev, prepared, state_path=tmp_path / "b.pt", **kw)
    monkeypatch.setattr(T, "train_step", real_step)
    resumed = fresh()  # a new process would build the model from scratch
    h_resumed = fit(resumed, ev, prepared, state_path=tmp_path / "b.pt", **kw)
    assert [h["epoch"] for h in h_resumed] == [0, 1, 2]
    assert [h["loss"] for h in h_resumed] == pytest.approx([h["loss"] for h in h_whole], rel=1e-5)
    for (name, p), q in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(q, p, msg=name)
    with pytest.raises(PsflError, match="another run"):
        fit(fresh(), ev, prepared, state_path=tmp_path / "b.pt", **{**kw, "state_key": "run-b"})


def test_run_central_refuses_an_unfinished_folder_without_resume(tmp_path, monkeypatch):
    import psfl.central.train as T

    ds = synthetic_dataset(64, 16)
    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: ds)
    cfg = CentralConfig(model="tiny-CSC", epochs=2, batch_size=16, evaluator_epochs=1, test_snr_db=(10.0,),
                        evaluator_cache_dir=str(tmp_path / "cache"), lr_schedule="cosine")
    real_step, calls = T.train_step, {"n": 0}

    def dies_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(T, "train_step", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_central(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(T, "train_step", real_step)
    assert (tmp_path / "run" / T.STATE_FILE).is_file()
    with pytest.raises(PsflError, match="--resume"):
        run_central(cfg, tmp_path / "run", progress=False)
    with pytest.raises(PsflError, match="another run"):  # other training settings
        run_central(replace(cfg, lr=0.5), tmp_path / "run", progress=False, resume=True)
    r = run_central(replace(cfg, test_snr_db=(0.0, 20.0)), tmp_path / "run", progress=False, resume=True)
    assert [h["epoch"] for h in r.history] == [0, 1] and len(r.table) == 2
    assert not (tmp_path / "run" / T.STATE_FILE).exists()
