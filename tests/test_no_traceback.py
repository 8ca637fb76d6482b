"""No traceback for bad input (issue 12, item 4): random config values, data files,
checkpoints and images either work or raise PsflError (one line, exit 2), never another
exception. Property tests (hypothesis)."""
import dataclasses
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from psfl.cli import main
from psfl.config import RunConfig, load_config
from psfl.utils.errors import PsflError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def all_fields(cls=RunConfig, prefix=""):
    for f in dataclasses.fields(cls):
        sub = getattr(RunConfig(), f.name) if cls is RunConfig else None
        if sub is not None and dataclasses.is_dataclass(sub):
            yield from all_fields(type(sub), f"{f.name}.")
        else:
            yield f"{prefix}{f.name}"


FIELDS = sorted(all_fields())


def toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


scalars = st.one_of(st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["M", "tiny", "cpu", "sgd", "awgn", "iid", "", "0"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=5), scalars, max_size=3))
raw_text = st.text(max_size=20)  # not necessarily TOML: the loader must say so


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(FIELDS + ["nope.field", "method_options.psfl.x"]),
                          st.one_of(values.map(toml), raw_text)), min_size=1, max_size=3))
@example([("evaluator.cache_dir", '"\\u0000"')])  # found by hypothesis: a NUL in a path was a ValueError
@example([("agp.bn_recalibration", "inf")])  # found by hypothesis: int(inf) was an OverflowError
def test_random_config_values_are_accepted_or_one_clear_error(items):
    from psfl.methods import check_run_config

    try:
        check_run_config(load_config(None, [f"{k}={v}" for k, v in items]))
    except PsflError as e:
        assert str(e) and "\n" not in str(e).strip()


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


arrays = st.dictionaries(st.sampled_from(["x_train", "y_train", "x_test", "y_test", "other"]),
                         st.tuples(st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
                                   st.lists(st.integers(0, 4), min_size=0, max_size=4)),
                         max_size=5)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), arrays.map(lambda d: _npz_bytes(
    {k: np.zeros(shape, dtype) for k, (dtype, shape) in d.items()}))))
def test_random_data_files_are_read_or_one_clear_error(tmp_path, blob):
    from psfl.data import load_dataset
    from psfl.data.datasets import clear_dataset_cache

    (tmp_path / "mnist.npz").write_bytes(blob)
    clear_dataset_cache()
    try:
        load_dataset("mnist", source="npz", data_dir=tmp_path)
    except PsflError:
        pass


def _zip_of(blob: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", blob)
    return buf.getvalue()


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(_zip_of)))
def test_random_checkpoint_bytes_are_one_clear_error(tmp_path, blob):
    from psfl.models import load_model_checkpoint
    from psfl.runners.store import load_checkpoint

    (tmp_path / "checkpoint.pt").write_bytes(blob)
    with pytest.raises(PsflError):
        load_checkpoint(tmp_path)
    with pytest.raises(PsflError):
        load_model_checkpoint(tmp_path / "checkpoint.pt")


@SETTINGS
@given(st.binary(max_size=300))
def test_random_image_bytes_are_one_clear_error(tmp_path, blob):
    from psfl.data import ResolvedInput
    from psfl.evaluate.transmit import load_image_files

    (tmp_path / "x.png").write_bytes(blob)
    try:
        load_image_files([tmp_path / "x.png"], ResolvedInput("custom", 28, 1, (0.5,), (0.25,)))
    except PsflError:
        pass


@pytest.mark.parametrize("argv, needle", [
    (["transmit", "--checkpoint", "m.pt", "--snr", "nan", "--image", "x.png"], "--snr"),
    (["transmit", "--checkpoint", "m.pt", "--snr", "1e9", "--image", "x.png"], "--snr"),
    (["run", "--set", "channel.snr_max_db=1e9"], "channel.snr_min_db"),
    (["run", "--set", "channel.snr_min_db=-1000", "--set", "channel.snr_max_db=-990"], "channel.snr_min_db"),
    (["run", "--set", "energy.bandwidth_hz=1e-300"], "energy.bandwidth_hz"),
    (["run", "--set", "model.family='huge'"], "huge"),
    (["run", "--set", "train.optimizer='lbfgs'"], "lbfgs"),
    (["run", "--out", "/proc/psfl-not-writable/r"], "run folder"),
])
def test_bad_cli_input_is_one_line_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
