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
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(PsflError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_file():
    with pytest.raises(PsflError, match="not found"):
        load_config("/nonexistent.toml")
    assert RunConfig().validate().rounds >= 1
