"""MAE pre-training: the loss against a hand computation, a tiny run that learns, and the
end-to-end command on the bundled sample writing a checkpoint that rebuilds the model."""
import math

import pytest
import torch

from psfl.utils.errors import PsflError
from psfl.models import create_model, load_model_checkpoint
from psfl.models.gsc import patchify
from psfl.central.pretrain import PretrainConfig, cosine_lr, evaluate_mae, mae_loss, pretrain, pretrain_mae


def _waves(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Smooth random plane waves in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    freq = torch.rand(n, 2, generator=g) * 0.5  # (n, 2) radians per pixel
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    i = torch.arange(size, dtype=torch.float32)
    arg = freq[:, 0, None, None] * i[None, :, None] + freq[:, 1, None, None] * i[None, None, :] + phase
    return (0.5 + 0.4 * torch.sin(arg)).unsqueeze(1)  # (n, 1, size, size)


def test_mae_loss_counts_masked_patches_only():
    model = create_model("tiny-M", img_size=8, in_chans=1)  # 2x2 patches of 4x4
    x = torch.zeros(1, 1, 8, 8)
    x_hat = x.clone()
    x_hat[..., :4, :4] = 2.0  # error only in patch 0: per-pixel squared error 4
    x_hat[..., 4:, 4:] = 1.0  # and in patch 3: squared error 1
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # patches 0 and 1 masked
    assert mae_loss(model, x, x_hat, mask).item() == pytest.approx((4.0 + 0.0) / 2)
    assert mae_loss(model, x, x_hat, None).item() == pytest.approx((4.0 + 1.0) / 4)
    # norm_pix_loss: each target patch standardised by its own mean and variance
    y = torch.rand(1, 1, 8, 8)
    t = patchify(y, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    got = mae_loss(model, y, torch.zeros_like(y), None, norm_pix_loss=True).item()
    assert got == pytest.approx(t.pow(2).mean().item(), rel=1e-5)


def test_cosine_schedule():
    assert cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


def _ramps(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Images of one random brightness with a random vertical ramp: masked patches are
    predictable from the visible ones, not from the dataset mean."""
    g = torch.Generator().manual_seed(seed)
    level = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    slope = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.4
    ramp = torch.linspace(-1, 1, size).view(1, 1, size, 1)
    return (level + slope * ramp).expand(n, 1, size, size).contiguous()  # (n, 1, size, size)


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_pretraining_learns_to_fill_masked_patches(seed):
    torch.manual_seed(seed)
    model = create_model("tiny-M", img_size=28, in_chans=1)
    x, x_eval = _ramps(512, seed=seed), _ramps(64, seed=10 + seed)
    cfg = PretrainConfig(steps=150, batch_size=32, lr=3e-3)
    before = evaluate_mae(model, x_eval, cfg, seed=7)
    history = pretrain_mae(model, x, cfg, torch.Generator().manual_seed(seed), log_every=30)
    after = evaluate_mae(model, x_eval, cfg, seed=7)
    assert [h["step"] for h in history] == [30, 60, 90, 120, 150]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert after["masked_mse"] < 0.2 * before["masked_mse"]
    # better than predicting the mean image: the visible patches are used
    mean_predictor = (x_eval - x.mean(0)).pow(2).mean().item()
    assert after["masked_mse"] < 0.5 * mean_predictor


def test_pretrain_through_awgn_runs():
    model = create_model("tiny-L", img_size=28, in_chans=1)
    cfg = PretrainConfig(steps=3, batch_size=8, snr_db=5.0, norm_pix_loss=True)
    history = pretrain_mae(model, _waves(16), cfg, torch.Generator().manual_seed(0), log_every=1)
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)


def test_pretrain_end_to_end_writes_a_mentor_checkpoint(tmp_path):
    cfg = PretrainConfig(model="tiny-M", source="bundled", max_train=128, steps=4, batch_size=32,
                         eval_samples=64, out=str(tmp_path / "mae.pt"))
    result = pretrain(cfg)
    assert result.checkpoint.is_file()
    mentor = load_model_checkpoint(result.checkpoint)
    assert mentor.preset["name"] == "tiny-M" and (mentor.img_size, mentor.in_chans) == (28, 1)
    assert mentor.checkpoint_config["pretrain"]["mask_ratio"] == 0.75
    assert mentor.checkpoint_config["device"]["device"] == "cpu"  # provenance: psfl.utils.device.device_info
    assert set(result.final) >= {"masked_mse", "full_mse", "samples_per_s"}
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, mentor.state_dict()[k])


def test_pretrain_rejects_csc_and_bad_settings():
    with pytest.raises(PsflError, match="GSC preset"):
        pretrain(PretrainConfig(model="tiny-CSC", source="bundled", steps=1))
    with pytest.raises(PsflError, match="mask_ratio"):
        pretrain(PretrainConfig(model="tiny-M", source="bundled", mask_ratio=1.0))


def test_pretrain_cli(tmp_path, capsys):
    from psfl.cli import main

    out = tmp_path / "m.pt"
    assert main(["pretrain", "--model", "tiny-H", "--source", "bundled", "--max-train", "64",
                 "--steps", "2", "--batch-size", "32", "--out", str(out)]) == 0
    assert out.is_file() and "checkpoint:" in capsys.readouterr().out
