"""Checkpoints: official MAE / timm layouts (synthetic state dicts with the real key names
and shapes; nothing is downloaded) and psfl's own save/load round trip."""
import pytest
import torch

from psfl.utils.errors import PsflError
from psfl.models import create_model, load_mae_checkpoint, load_model_checkpoint, save_model_checkpoint

ENCODER = ("patch_embed", "cls_token", "blocks", "norm")
DECODER = ("mask_token", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred")


def _group(state, tops):
    return {k: v for k, v in state.items() if k.split(".")[0] in tops}


def _mae_source(seed: int, size: int = 28, chans: int = 1):
    """A differently initialised tiny-M standing in for an official MAE model."""
    torch.manual_seed(seed)
    src = create_model("tiny-M", img_size=size, in_chans=chans)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["pos_embed"] = src.pos_embed.clone()  # official files carry the fixed tables
    state["decoder_pos_embed"] = src.decoder_pos_embed.clone()
    return src, state


def test_encoder_only_pretrain_checkpoint_loads():
    src, state = _mae_source(1)
    ckpt = {"model": _group(state, ENCODER) | {"pos_embed": state["pos_embed"]}}  # mae_pretrain_vit_*.pth
    torch.manual_seed(2)
    model = create_model("tiny-M", img_size=28, in_chans=1)
    dec_before = model.decoder_pred.weight.clone()
    report = load_mae_checkpoint(model, ckpt)
    assert set(report.loaded) == set(_group(src.state_dict(), ENCODER))
    assert report.skipped == ["pos_embed"] and report.pos_embed_max_abs_diff["pos_embed"] == 0.0
    assert "decoder_pred.weight" in report.not_in_checkpoint and "channel_encoder.weight" in report.not_in_checkpoint
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert torch.equal(model.cls_token, src.cls_token)
    assert torch.equal(model.decoder_pred.weight, dec_before)  # decoder untouched


def test_full_visualize_checkpoint_loads_encoder_and_decoder(tmp_path):
    src, state = _mae_source(3)
    full = {k: v for k, v in state.items() if not k.startswith("channel_")}  # mae_visualize_vit_*.pth
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    torch.save({"model": full}, path)
    model = create_model("tiny-M", img_size=28, in_chans=1)
    report = load_mae_checkpoint(model, path)
    assert "mask_token" in report.loaded and "decoder_blocks.0.mlp.fc2.weight" in report.loaded
    assert sorted(report.skipped) == ["decoder_pos_embed", "pos_embed"]
    assert sorted(report.not_in_checkpoint) == ["channel_decoder.weight", "channel_encoder.weight"]
    assert torch.equal(model.decoder_pred.bias, src.decoder_pred.bias)


def test_timm_style_state_dict_with_head_and_ddp_prefix():
    src, state = _mae_source(4)
    timm_sd = _group(state, ENCODER) | {"pos_embed": state["pos_embed"],
                                         "fc_norm.weight": torch.ones(16), "head.weight": torch.zeros(10, 16)}
    model = create_model("tiny-M", img_size=28, in_chans=1)
    report = load_mae_checkpoint(model, {"module." + k: v for k, v in timm_sd.items()})
    assert {"fc_norm.weight", "head.weight"} <= set(report.skipped)
    assert torch.equal(model.norm.weight, src.norm.weight)


def test_paper_m_synthetic_official_encoder_on_meta():
    ref = create_model("paper-M", device="meta")
    enc = _group(ref.state_dict(), ENCODER)
    enc["pos_embed"] = torch.empty(1, 197, 768, device="meta")  # real key names and shapes
    assert "blocks.11.attn.qkv.weight" in enc and tuple(enc["patch_embed.proj.weight"].shape) == (768, 3, 16, 16)
    model = create_model("paper-M", device="meta")
    report = load_mae_checkpoint(model, {"model": enc})
    assert len(report.loaded) == len(enc) - 1
    bad = dict(enc, pos_embed=torch.empty(1, 50, 768, device="meta"))  # a different grid
    with pytest.raises(PsflError, match=r"pos_embed: checkpoint \(1, 50, 768\) vs model \(1, 197, 768\)"):
        load_mae_checkpoint(model, {"model": bad})


def test_wrong_shape_missing_and_unexpected_keys_are_named():
    _, state = _mae_source(5)
    enc = _group(state, ENCODER)
    model = create_model("tiny-M", img_size=28, in_chans=1)
    wrong = dict(enc, **{"blocks.0.attn.qkv.weight": torch.zeros(3, 3)})
    with pytest.raises(PsflError, match=r"blocks\.0\.attn\.qkv\.weight: checkpoint \(3, 3\) vs model \(48, 16\)"):
        load_mae_checkpoint(model, wrong)
    missing = {k: v for k, v in enc.items() if k != "norm.bias"}
    with pytest.raises(PsflError, match=r"missing 1 key\(s\) \(encoder: 1\): norm\.bias"):
        load_mae_checkpoint(model, missing)
    partial_decoder = dict(enc, **{"decoder_embed.weight": state["decoder_embed.weight"]})
    with pytest.raises(PsflError, match=r"missing 18 key\(s\) \(decoder: 18\): mask_token"):
        load_mae_checkpoint(model, partial_decoder)
    with pytest.raises(PsflError, match=r"unexpected 1 key\(s\): blocks\.9\.norm1\.weight"):
        load_mae_checkpoint(model, dict(enc, **{"blocks.9.norm1.weight": torch.ones(16)}))
    # non-strict: the rest loads, the problems are reported
    report = load_mae_checkpoint(model, missing, strict=False)
    assert "norm.bias" in report.not_in_checkpoint and "norm.weight" in report.loaded


def test_bad_inputs():
    model = create_model("tiny-M", img_size=28, in_chans=1)
    with pytest.raises(PsflError, match="does not exist"):
        load_mae_checkpoint(model, "/nonexistent/mae.pth")
    with pytest.raises(PsflError, match="state dict of tensors"):
        load_mae_checkpoint(model, {"model": {"a": 1}})
    with pytest.raises(PsflError, match="GSC models only"):
        load_mae_checkpoint(create_model("tiny-CSC", img_size=28, in_chans=1), {})


@pytest.mark.parametrize("name", ["tiny-M", "tiny-CSC"])
def test_model_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, img_size=32, in_chans=3, channel_dim=6)
    path = save_model_checkpoint(model, tmp_path / "sub" / "m.pt", config={"note": "x", "steps": 3})
    again = load_model_checkpoint(path)
    assert again.preset == model.preset and again.checkpoint_config == {"note": "x", "steps": 3}
    x = torch.rand(2, 3, 32, 32)
    model.eval(), again.eval()
    a = model(x, 5.0, generator=torch.Generator().manual_seed(0)).x_hat
    b = again(x, 5.0, generator=torch.Generator().manual_seed(0)).x_hat
    assert torch.equal(a, b)


def test_model_checkpoint_rejects_foreign_files(tmp_path):
    p = tmp_path / "raw.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(PsflError, match="not a psfl model checkpoint"):
        load_model_checkpoint(p)
    p.write_bytes(b"not a torch file")
    with pytest.raises(PsflError, match="cannot be read"):
        load_model_checkpoint(p)
    with pytest.raises(PsflError, match="create_model"):
        from psfl.models import GSCConfig, GSCModel

        cfg = GSCConfig(patch_size=4, embed_dim=8, depth=1, num_heads=2, decoder_embed_dim=8,
                        decoder_depth=1, decoder_num_heads=2, channel_dim=4)
        save_model_checkpoint(GSCModel(cfg, img_size=28, in_chans=1), tmp_path / "x.pt")


def test_torchvision_resnet18_trunk_fits_paper_csc():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet18()
    trunk = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    own = create_model("paper-CSC", device="meta").state_dict()
    assert all(k in own and own[k].shape == v.shape for k, v in trunk.items())
