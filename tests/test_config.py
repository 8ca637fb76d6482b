import pytest

from psfl.config import RunConfig, dump_config, load_config
from psfl.methods import options_for
from psfl.utils.errors import PsflError


def test_overrides_are_typed_and_roundtrip(tmp_path):
    import shutil

    from psfl.data.datasets import DATASETS, bundled_path

    shutil.copy(bundled_path(DATASETS.get("fashion_mnist")), tmp_path / "fashion_mnist.npz")
    cfg = load_config(None, ["train.lr=0.01", "rounds=3", "agp.enabled=false", "model.mentors=M,L,H",
                             "data.num_clients=3", "method_options.stc.p=0.02", f'data.data_dir="{tmp_path}"'])
    assert cfg.train.lr == 0.01 and cfg.rounds == 3 and cfg.agp.enabled is False
    assert cfg.model.mentors == ["M", "L", "H"] and cfg.method_options["stc"]["p"] == 0.02
    assert options_for(cfg, "stc").p == 0.02 and cfg.data.source == "npz"
    p = tmp_path / "c.toml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("override, field", [
    ("train.lr=abc", "train.lr"), ("train.lrr=1", "train.lrr"), ("data.alpha=0", "data.alpha"),
    ("agp.zeta_max=1.0", "agp.zeta_max"), ("rounds=2.5", "rounds"), ("model.mentors=M", "model.mentors"),
    ("model.bandwidth_ratio=1/0", "model.bandwidth_ratio"), ("model.bandwidth_ratio=abc", "model.bandwidth_ratio"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(PsflError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_file():
    with pytest.raises(PsflError, match="not found"):
        load_config("/nonexistent.toml")
    assert RunConfig().validate().rounds >= 1


def test_bandwidth_ratio_builds_every_model_of_the_run_for_it():
    """model.bandwidth_ratio reaches every model the engine builds (pooled and fresh
    states), so mentors, student and contenders all send k/n of the image."""
    import torch

    from psfl.channel import create_channel
    from psfl.methods.base import ModelFactory

    cfg = load_config(None, ['model.bandwidth_ratio="1/6"', 'model.family="tiny"'])
    f = ModelFactory(0, "tiny", 32, 3, create_channel("awgn"), torch.device("cpu"), cfg.model.ratio())
    for preset in ("tiny-M", "tiny-H", "tiny-CSC"):
        m = f.model(preset)
        assert m.bandwidth_ratio == pytest.approx(1 / 6)  # 3072 / 6 = 512 complex symbols: 64 or 16 tokens
        assert f.fresh_state(preset, 1)["channel_encoder.weight"].shape == m.channel_encoder.weight.shape
    assert load_config(None, []).model.ratio() is None
