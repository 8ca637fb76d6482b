"""Semantic-communication models: registry-parametrised shape/gradient/NaN checks on the
cpu and tiny presets, exact Table I counts on the meta device, masking, channel."""
import json
import math

import pytest
import torch

from psfl.channel import create_channel
from psfl.utils.errors import PsflError
from psfl.models import (MODELS, count_parameters, create_model, list_models, model_info,
                         model_table)
from psfl.models.gsc import patchify, sincos_2d, unpatchify

SMALL = list_models("cpu-*") + list_models("tiny-*") + list_models("deepjscc*")
SHAPES = [(28, 1), (32, 3)]


def _batch(size: int, chans: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, chans, size, size, generator=torch.Generator().manual_seed(size + chans))


@pytest.mark.parametrize("size,chans", SHAPES)
@pytest.mark.parametrize("name", SMALL)
def test_forward_shapes_gradients_no_nan(name, size, chans):
    torch.manual_seed(0)
    model = create_model(name, img_size=size, in_chans=chans)
    x = _batch(size, chans)
    g = torch.Generator().manual_seed(1)
    out = model(x, 10.0, generator=g)
    B, (h, w) = x.shape[0], model.grid
    L, D, c = h * w, model.sem_dim, model.channel_dim
    assert out.grid == (h, w)
    assert out.S.shape == (B, L, D) and out.C.shape == (B, L, D)
    assert out.X.shape == (B, L, c) and out.Y.shape == (B, L, c)
    assert out.x_hat.shape == x.shape
    assert out.mask is None
    loss = (out.x_hat - x).pow(2).mean() + out.S.pow(2).mean() + out.C.pow(2).mean()
    if model.family == "gsc":  # mask_token is only used by masked (MAE) forwards
        o2 = model(x, 10.0, generator=g, mask_ratio=0.5)
        loss = loss + (o2.x_hat - x).pow(2).mean()
    loss.backward()
    for t in (out.S, out.X, out.Y, out.C, out.x_hat):
        assert torch.isfinite(t).all()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{name}: parameters without a finite gradient: {no_grad}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"{name}: parameters with an all-zero gradient: {zero}"


PAPER_COUNTS = {"paper-M": 112_442_112, "paper-L": 330_287_872, "paper-H": 657_924_684}


@pytest.mark.parametrize("name,count", sorted(PAPER_COUNTS.items()))
def test_paper_gsc_counts_match_table1_exactly(name, count):
    model = create_model(name, device="meta")
    assert count_parameters(model) == count
    # fixed sin-cos tables are buffers: not trainable, not counted, not in the state dict
    assert not any("pos_embed" in n for n, _ in model.named_parameters())
    assert not any("pos_embed" in k for k in model.state_dict())
    assert model.img_size == 224 and model.in_chans == 3 and model.channel_dim == 512


def test_paper_m_is_mae_vit_b_plus_bias_free_channel_codec():
    model = create_model("paper-M", device="meta")
    codec = count_parameters(model.channel_encoder) + count_parameters(model.channel_decoder)
    assert codec == 2 * 768 * 512
    assert count_parameters(model) - codec == 111_655_680
    assert model.grid == (14, 14) and create_model("paper-H", device="meta").grid == (16, 16)


def test_paper_csc_count_within_two_percent_of_table1():
    model = create_model("paper-CSC", device="meta")
    n = count_parameters(model)
    assert abs(n - 54_721_065) / 54_721_065 < 0.02
    assert model.grid == (7, 7) and model.sem_dim == 512 and model.channel_dim == 512


def test_paper_csc_reconstructs_224_exactly():
    model = create_model("paper-CSC", device="meta")
    out = model(torch.empty(1, 3, 224, 224, device="meta"), 10.0)
    assert tuple(out.x_hat.shape) == (1, 3, 224, 224)
    assert tuple(out.S.shape) == (1, 49, 512)


def test_families_share_one_channel_width():
    for prefix in ("paper", "tiny"):
        widths = {model_info(n)["channel_dim"] for n in list_models(f"{prefix}-*")}
        assert len(widths) == 1, (prefix, widths)


@pytest.mark.parametrize("size", [(28, 1), (32, 3)])
def test_cpu_presets_default_to_k_n_one_sixth(size):
    """The cpu presets compress (issue 27): each sends k/n = 1/6 up to what an even c
    per token allows (2 real symbols per token = 1 / (C H W / L) of k/n), the ViT tiers
    with one c (same token grid); before they sent k/n 2.0 at 28x28x1."""
    img, chans = size
    rows = {r["name"]: r for r in model_table("cpu-*", img_size=img, in_chans=chans)}
    assert len({rows[f"cpu-{t}"]["channel_dim"] for t in "MLH"}) == 1
    for r in rows.values():
        tokens = r["grid"][0] * r["grid"][1]
        step = tokens / (chans * img * img)  # k/n of one more complex symbol per token
        assert abs(r["bandwidth_ratio"] - 1 / 6) <= step / 2 + 1e-12, r
        assert r["bandwidth_ratio"] == r["channel_symbols"] / 2 / (chans * img * img)
    at12 = {r["name"]: r for r in model_table("cpu-*", img_size=img, in_chans=chans, bandwidth_ratio=1 / 12)}
    assert all(at12[n]["channel_dim"] < rows[n]["channel_dim"] for n in rows)


def test_size_ratios_follow_the_paper_roughly():
    rows = {r["name"]: r for r in model_table("cpu-*")}
    assert 2.5 < rows["cpu-L"]["ratio_vs_M"] < 3.3
    assert 5.3 < rows["cpu-H"]["ratio_vs_M"] < 6.5
    assert 0.4 < rows["cpu-CSC"]["ratio_vs_M"] < 0.6
    assert all(r["params"] < 100_000 for r in model_table("tiny-*"))


def test_mask_ratio_075_masks_75_percent():
    model = create_model("tiny-M", img_size=32, in_chans=3)  # 8x8 = 64 patches
    x = _batch(32, 3, b=4)
    out = model(x, 10.0, generator=torch.Generator().manual_seed(0), mask_ratio=0.75)
    assert out.mask.shape == (4, 64)
    assert out.mask.sum(1).tolist() == [48.0] * 4  # exactly 75 %
    assert out.S.shape == (4, 16, model.sem_dim)  # only visible tokens are encoded and sent
    assert out.X.shape == (4, 16, model.channel_dim)
    assert out.x_hat.shape == x.shape
    # per-sample masks differ and are reproducible from the generator
    assert not torch.equal(out.mask[0], out.mask[1])
    again = model(x, 10.0, generator=torch.Generator().manual_seed(0), mask_ratio=0.75)
    assert torch.equal(out.mask, again.mask) and torch.allclose(out.x_hat, again.x_hat)
    # 28x28: 49 patches, MAE keeps int(49 * 0.25) = 12
    m28 = create_model("tiny-M", img_size=28, in_chans=1)(_batch(28, 1), 10.0, mask_ratio=0.75).mask
    assert m28.sum(1).tolist() == [37.0, 37.0]


def test_mask_ratio_must_be_below_one():
    model = create_model("tiny-H", img_size=28, in_chans=1)
    x = _batch(28, 1)
    with pytest.raises(ValueError):
        model(x, 10.0, mask_ratio=1.0)


def test_csc_rejects_masking():
    model = create_model("tiny-CSC", img_size=28, in_chans=1)
    with pytest.raises(ValueError):
        model(_batch(28, 1), 10.0, mask_ratio=0.75)


def test_channel_is_replaceable_and_noiseless_link():
    model = create_model("tiny-M", img_size=28, in_chans=1)
    x = _batch(28, 1)
    out = model(x, None)  # noiseless: Y = X, unit power per symbol
    assert torch.equal(out.X, out.Y)
    assert out.X.pow(2).mean(dim=(1, 2)).allclose(torch.ones(2), atol=1e-5)
    # AWGN at 0 dB: noise variance 1 per real symbol
    big = model(_batch(28, 1, b=64), 0.0, generator=torch.Generator().manual_seed(0))
    assert (big.Y - big.X).var().item() == pytest.approx(1.0, rel=0.05)
    model.channel = create_channel("rayleigh")
    out = model(x, 10.0, generator=torch.Generator().manual_seed(0))
    assert out.Y.shape == out.X.shape and torch.isfinite(out.x_hat).all()
    assert create_model("tiny-CSC", img_size=28, in_chans=1, channel="rician").channel.__class__.__name__ == "Rician"


def test_sincos_table_orientation_hand_computation():
    D, (h, w) = 8, (2, 3)
    pe = sincos_2d(D, (h, w))  # (1, 1 + 6, 8)
    assert pe.shape == (1, 7, 8) and pe[0, 0].abs().sum() == 0  # cls row is zero
    omega = [1.0, 1.0 / 100.0]  # 1 / 10000^(i / 2) for i = 0, 1
    for r in range(h):
        for c in range(w):
            row = pe[0, 1 + r * w + c]
            want = ([math.sin(c * o) for o in omega] + [math.cos(c * o) for o in omega]
                    + [math.sin(r * o) for o in omega] + [math.cos(r * o) for o in omega])
            assert row.tolist() == pytest.approx(want, abs=1e-6)


def test_patchify_round_trip_and_mae_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = patchify(x, 4)  # (2, 4, 48)
    assert p.shape == (2, 4, 48)
    assert torch.equal(unpatchify(p, 4, (2, 2), 3), x)
    # patch 1 = top-right; its first vector entries are pixel (0, 4) of channels 0, 1, 2
    assert p[0, 1, :3].tolist() == [x[0, 0, 0, 4].item(), x[0, 1, 0, 4].item(), x[0, 2, 0, 4].item()]


def test_registry_errors_are_clear():
    with pytest.raises(PsflError, match="unknown model preset"):
        create_model("paper-XL")
    with pytest.raises(PsflError, match="img_size"):
        create_model("cpu-M")
    with pytest.raises(PsflError, match="unknown override"):
        create_model("tiny-M", img_size=28, in_chans=1, embed_width=3)
    assert set(list_models("paper-*")) == {"paper-M", "paper-L", "paper-H", "paper-CSC"}
    for name in MODELS:
        assert MODELS.get(name).family in ("gsc", "csc", "jscc")


def test_create_model_records_preset_and_overrides():
    m = create_model("tiny-L", img_size=32, in_chans=3, channel_dim=12)
    assert m.preset == {"name": "tiny-L", "img_size": 32, "in_chans": 3, "overrides": {"channel_dim": 12}}
    assert m.channel_dim == 12 and m.channel_encoder.weight.shape == (12, m.sem_dim)


def test_models_cli_json(capsys):
    from psfl.cli import main

    assert main(["models", "paper-*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["paper-M"]["params"] == 112_442_112
    assert rows["paper-H"]["ratio_vs_M"] == pytest.approx(657_924_684 / 112_442_112)
    assert main(["models", "tiny-*"]) == 0
    assert "tiny-CSC" in capsys.readouterr().out


@pytest.mark.parametrize("size,chans", SHAPES)
@pytest.mark.parametrize("name", SMALL)
def test_channel_symbols_and_bandwidth_ratio_are_what_a_forward_sends(name, size, chans):
    """k/n is measured off the symbols a forward puts on the air: X per image, halved
    (complex), over the image's C H W values."""
    model = create_model(name, img_size=size, in_chans=chans)
    out = model(_batch(size, chans), 10.0, generator=torch.Generator().manual_seed(0))
    sent = out.X[0].numel()
    assert model.channel_symbols == sent
    assert model.bandwidth_ratio == pytest.approx(sent / 2 / (chans * size * size), rel=1e-12)


def test_bandwidth_ratio_hand_computed_for_the_cpu_presets():
    """The issue-27 numbers: at the old c = 64, cpu-M at 28x28x1 sent 49 tokens x 64 =
    3,136 real symbols (k/n = 1568 / 784 = 2) and cpu-CSC 16 x 64 = 1,024 (512 / 784); at
    the default 1/6 cpu-M sends 49 x 6 = 294 (147 / 784) and cpu-CSC 16 x 16 = 256
    (128 / 784); on 32x32x3 the CSC's 1,024 real symbols are 512 complex ones for 3,072
    values: exactly 1/6."""
    old = create_model("cpu-M", img_size=28, in_chans=1, device="meta", channel_dim=64)
    assert old.channel_symbols == 3136 and old.bandwidth_ratio == 2.0
    old = create_model("cpu-CSC", img_size=28, in_chans=1, device="meta", channel_dim=64)
    assert old.bandwidth_ratio == pytest.approx(512 / 784)
    assert model_info("cpu-M")["channel_symbols"] == 294
    assert model_info("cpu-M")["bandwidth_ratio"] == pytest.approx(147 / 784)
    assert model_info("cpu-CSC")["bandwidth_ratio"] == pytest.approx(128 / 784)
    assert model_info("cpu-CSC", 32, 3)["bandwidth_ratio"] == pytest.approx(1 / 6)


def test_checkpoint_from_before_the_default_ratio_loads_at_its_own_c(tmp_path):
    """A checkpoint saved when the cpu presets had a fixed c = 64 records no channel_dim
    override; it must rebuild at c = 64 (not at today's default k/n) and load strictly."""
    from psfl.models import load_model_checkpoint, save_model_checkpoint

    m = create_model("cpu-M", img_size=28, in_chans=1, channel_dim=64)
    m.preset["overrides"] = {}  # what a checkpoint written before the change holds
    path = save_model_checkpoint(m, tmp_path / "old.pt")
    back = load_model_checkpoint(path)
    assert back.channel_dim == 64
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))
    new = create_model("cpu-M", img_size=28, in_chans=1)
    assert new.preset["overrides"] == {"channel_dim": 6}
    assert load_model_checkpoint(save_model_checkpoint(new, tmp_path / "new.pt")).channel_dim == 6


@pytest.mark.parametrize("ratio,size,chans,name,c", [
    (1 / 6, 32, 3, "cpu-M", 16), (1 / 12, 32, 3, "cpu-M", 8),  # 3072 / 6 = 512 complex over 64 tokens -> 8 each
    (1 / 6, 32, 3, "cpu-CSC", 64), (1 / 12, 32, 3, "cpu-CSC", 32),  # over 16 tokens -> 32 / 16 complex each
    (1 / 6, 28, 1, "cpu-M", 6),  # 784 / 6 = 130.7 complex over 49 tokens = 2.67 -> 3 -> c = 6, k/n = 147 / 784
])
def test_presets_built_for_a_bandwidth_ratio(ratio, size, chans, name, c):
    from psfl.models import channel_dim_for

    m = create_model(name, img_size=size, in_chans=chans, bandwidth_ratio=ratio)
    assert m.channel_dim == c == channel_dim_for(name, ratio, size, chans)
    assert m.preset["overrides"] == {"channel_dim": c}  # checkpoints rebuild the same model
    reached = m.channel_symbols / 2 / (chans * size * size)
    assert m.bandwidth_ratio == pytest.approx(reached)
    if size == 32:
        assert reached == pytest.approx(ratio)
    with pytest.raises(PsflError, match="not both"):
        create_model(name, img_size=size, in_chans=chans, bandwidth_ratio=ratio, channel_dim=4)


def test_ratio_parsing_and_formatting():
    from psfl.models import format_ratio, parse_ratio

    assert parse_ratio("1/6") == pytest.approx(1 / 6) and parse_ratio("0.25") == 0.25 and parse_ratio(2) == 2.0
    for bad in ("x/6", "1/0", "0", "-1/6", "100"):
        with pytest.raises(PsflError):
            parse_ratio(bad)
    assert [format_ratio(r) for r in (1 / 6, 1 / 12, 0.1875, 2.0, 512 / 784)] == ["1/6", "1/12", "0.188", "2.00",
                                                                                 "0.653"]


def test_deepjscc_layout_matches_bourtsoulatze_2019():
    """5 convs 5x5 (16, 32, 32, 32, c; strides 2, 2, 1, 1, 1) with PReLU, mirrored
    transposed convs, sigmoid output; at 32x32x3 an 8x8 map of c = 16 symbols: k/n = 1/6."""
    m = create_model("deepjscc", img_size=32, in_chans=3)
    assert m.grid == (8, 8) and m.channel_dim == 16 and m.bandwidth_ratio == pytest.approx(1 / 6)

    def conv(cin, cout):  # 5x5 weights + bias + the PReLU's per-channel slope
        return cin * cout * 25 + cout

    enc = [(3, 16), (16, 32), (32, 32), (32, 32), (32, 16)]
    dec = [(16, 32), (32, 32), (32, 32), (32, 16), (16, 3)]
    expected = sum(conv(a, b) + b for a, b in enc) + sum(conv(a, b) + b for a, b in dec) - 3  # no PReLU at the end
    assert count_parameters(m) == expected
    x = _batch(32, 3)
    out = m(x, 10.0, generator=torch.Generator().manual_seed(0))
    x_hat = out.x_hat.detach()
    assert x_hat.shape == x.shape and float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1
    assert create_model("deepjscc", img_size=32, in_chans=3, bandwidth_ratio=1 / 12).channel_dim == 8


def test_gdn_hand_computation_and_inverse():
    """GDN at its initialisation (beta = 1, gamma = 0.1 I): y = x / sqrt(1 + 0.1 x^2);
    the inverse multiplies; both pass gradients to beta and gamma."""
    from psfl.models.deepjscc import GDN

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g, ig = GDN(3).double(), GDN(3, inverse=True).double()
    ref = torch.sqrt(1 + 0.1 * x * x)
    assert torch.allclose(g(x), x / ref, atol=1e-9) and torch.allclose(ig(x), x * ref, atol=1e-9)
    g(x).sum().backward()
    assert g.beta.grad is not None and g.gamma.grad is not None and g.gamma.grad.abs().sum() > 0


def test_nhwc_only_where_onednn_trains_it_safely():
    """oneDNN's NHWC backward for 1x1 strided convolutions with fewer input channels than
    its register block (8 on AVX2, 16 on AVX-512) corrupts the heap
    (psfl.utils.device.nhwc_trains_safely): the tiny CSC (downsamples 1->2, 2->4, 4->8)
    and the cpu CSC (8->16, 16->32, 32->48) train NCHW, the paper CSC (64 and up) and
    DeepJSCC (no such convolution) NHWC, the ViTs in the default layout."""
    from psfl.utils.device import nhwc_trains_safely

    def conv(cin, k, s):
        return torch.nn.Conv2d(cin, 16, k, s)
    assert not nhwc_trains_safely(conv(2, 1, 2)) and not nhwc_trains_safely(conv(15, 1, (1, 2)))
    assert not nhwc_trains_safely(conv(1, 1, 2)) and nhwc_trains_safely(conv(16, 1, 2))
    assert nhwc_trains_safely(conv(4, 3, 2)) and nhwc_trains_safely(conv(4, 1, 1))
    fmt = {n: create_model(n, img_size=28, in_chans=1, device="meta").memory_format
           for n in ("tiny-CSC", "cpu-CSC", "cpu-M", "deepjscc")}
    assert fmt == {"tiny-CSC": torch.contiguous_format, "cpu-CSC": torch.contiguous_format,
                   "cpu-M": torch.contiguous_format, "deepjscc": torch.channels_last}
    assert create_model("paper-CSC", device="meta").memory_format == torch.channels_last


@pytest.mark.parametrize("size,chans", [(28, 1), (32, 3)])
def test_deepjscc_trains_the_same_in_nhwc_as_in_nchw(size, chans):
    """The layout DeepJSCC trains in (NHWC) gives NCHW's reconstruction and gradients:
    oneDNN's NHWC kernels are a speed choice, not a different model. One step, batch 4.
    Float32 sums in another order differ by ~1e-6, and where a pre-activation lies within
    that of 0 a PReLU's slope flips for that element (one in tens of thousands: a single
    weight's gradient moves by ~1 %), so the whole gradient vector is compared in norm:
    3e-7 to 9e-7 apart on an AMD EPYC Zen 3 over three seeds; 2e-3 still catches a wrong
    kernel (a corrupted one is off by O(1))."""
    torch.manual_seed(0)
    ref = create_model("deepjscc", img_size=size, in_chans=chans)
    x = torch.rand(4, chans, size, size, generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for fmt in (torch.contiguous_format, ref.memory_format):
        m = create_model("deepjscc", img_size=size, in_chans=chans)
        m.load_state_dict(ref.state_dict())
        m.to(memory_format=fmt)
        out = m(x.contiguous(memory_format=fmt), None)
        (out.x_hat - x).square().mean().backward()
        outs.append(out.x_hat.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert ref.memory_format == torch.channels_last
    assert (outs[1] - outs[0]).abs().max() <= 1e-4 * outs[0].abs().max()
    assert (grads[1] - grads[0]).norm() <= 2e-3 * grads[0].norm()
