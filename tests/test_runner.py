"""In-process runner: determinism, measured bits, the global model for transmit (resume
after SIGKILL at chosen points: tests/test_crash.py)."""
import json
from pathlib import Path

import pytest
import torch

from psfl.config import load_config
from psfl.utils.errors import PsflError
from psfl.runners.inprocess import run_federated

TIMING = ("time_s", "compute_s")


def tiny_overrides(cache: Path, rounds: int = 3, method: str = "psfl") -> list[str]:
    """A seconds-long run. Methods with AGP prune from round 0 (no warm-up), so that
    two- and three-round tests exercise the masks. Local accuracy is scored on 32 images
    per client (a metric only: training and the global scores do not depend on it)."""
    agp = ["agp.warmup_rounds=0"] if method in ("psfl", "psfl-plus", "psfl-no-pld") else []
    return [f"method={method!r}".replace("'", '"'), f"rounds={rounds}", "data.num_clients=3",
            "model.family='tiny'", "train.local_steps=3", "train.batch_size=16",
            "data.eval_samples=64", "data.local_eval_samples=32", "evaluator.epochs=1", "evaluator.score_epochs=1",
            f"evaluator.cache_dir='{cache}'", "threads=1", *agp]


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_two_runs_identical_and_bits_measured(tmp_path, cache):
    cfg = load_config(None, tiny_overrides(cache, rounds=2))
    a = run_federated(cfg, tmp_path / "a", progress=False).records
    b = run_federated(cfg, tmp_path / "b", progress=False).records
    assert strip_timing(a) == strip_timing(b)
    for rec in a:
        assert 0.0 <= rec["zeta"] <= 0.9
        for c in rec["clients"]:
            assert c["upload_bits"] > 0 and c["upload_bits"] % 8 == 0
            assert c["energy_j"] == pytest.approx(0.1 * c["upload_bits"] / c["rate_bps"])
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1]
    assert (tmp_path / "a" / "config.toml").exists() and (tmp_path / "a" / "checkpoint.pt").exists()


def test_run_writes_its_global_model_for_transmit(tmp_path, cache):
    """The folder of a finished run is a model for `psfl transmit`: its global model is
    the server's aggregated student of the last round (not a fresh or a client's model)."""
    from psfl.evaluate.transmit import transmit_checkpoint
    from psfl.models import load_model_checkpoint

    cfg = load_config(None, tiny_overrides(cache, rounds=2))
    run_federated(cfg, tmp_path / "r", progress=False)
    g = load_model_checkpoint(tmp_path / "r" / "global_model.pt")
    assert g.checkpoint_config["rounds_done"] == 2 and g.checkpoint_config["dataset"] == "fashion_mnist"
    server = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["server"]["global"]
    state = g.state_dict()
    assert all(torch.equal(state[k], v) for k, v in server.items()) and len(server) == len(state)
    kw = dict(dataset="fashion_mnist", indices=[0, 1], evaluator_cache_dir=str(cache), evaluator_epochs=1,
              progress=False)
    by_dir, _ = transmit_checkpoint(tmp_path / "r", 10.0, tmp_path / "d.png", **kw)
    by_file, _ = transmit_checkpoint(tmp_path / "r" / "global_model.pt", 10.0, tmp_path / "f.png", **kw)
    assert by_dir.psnr == by_file.psnr
    with pytest.raises(PsflError, match="no global_model.pt"):
        transmit_checkpoint(tmp_path, 10.0, tmp_path / "x.png", **kw)



def test_validation_samples_score_on_held_out_training_images(tmp_path, cache):
    """data.validation_samples: the global test subset and every client's local test
    images are held-out training images (none of the test split), the evaluators are
    trained without them, and provenance says what was scored."""
    import numpy as np

    from psfl import data as D
    from psfl.methods import build_env

    cfg = load_config(None, tiny_overrides(cache, rounds=1) + ["data.validation_samples=570"])
    env = build_env(cfg, progress=False)
    ds = D.load_dataset("fashion_mnist", source="bundled")
    spec = D.INPUT_PRESETS.get("native").resolve(28, 1)
    rows = lambda x: {a.tobytes() for a in np.asarray(x)}  # noqa: E731
    test_rows = rows(D.to_model_input(ds.x_test, spec))
    val_rows = rows(D.to_model_input(D.validation_view(ds, 570).x_test, spec))
    scored = rows(env.evaluators.test_x) | set().union(*(rows(c.x_test) for c in env.data.clients))
    assert scored <= val_rows and not scored & test_rows
    trained = set().union(*(rows(c.x) for c in env.data.clients))
    assert not trained & val_rows
    prov = env.provenance
    assert prov["data"]["scored_on"].startswith("validation") and prov["data"]["test_images"] == 570
    assert prov["evaluators"]["scorer"]["fingerprint"] == D.validation_view(ds, 570).fingerprint()[:16]
