"""Issue 7: every setting honoured or rejected, data provenance, self-describing runs,
resume that extends, divergence that stops, scores that never touch training images."""
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from psfl.cli import main
from psfl.config import RunConfig, load_config
from psfl.methods import options_for
from psfl.utils.errors import DivergenceError, PsflError
from psfl.runners.inprocess import read_records, resume_config, run_federated

from test_runner import strip_timing, tiny_overrides

VOLATILE = ("started", "command", "git_commit")  # provenance entries that differ between identical runs


def _fmnist_dir(tmp: Path) -> Path:
    from psfl.data.datasets import DATASETS, bundled_path

    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundled_path(DATASETS.get("fashion_mnist")), tmp / "fashion_mnist.npz")
    return tmp


def _cache_copy(cache: Path, to: Path) -> Path:
    """Another evaluator cache holding copies of the session cache's two tiny-run
    evaluators: a run pointed at it reads them from there (the path in its provenance
    changes, the weights do not), where an empty one would train both again."""
    to.mkdir(parents=True, exist_ok=True)
    for pattern in ("fashion_mnist__native__cnn__e1__s0__*", "fashion_mnist__native__lenet__e1__s1__*"):
        files = sorted(cache.glob(pattern))
        assert files, f"the session cache lacks {pattern}"
        for f in files:
            shutil.copy(f, to / f.name)
    return to


def _digest(run_dir: Path) -> str:
    """What a run did: its metrics (timing aside) and its provenance (timestamps aside)."""
    recs = strip_timing(read_records(run_dir / "metrics.jsonl"))
    prov = json.loads((run_dir / "provenance.json").read_text())
    prov["runtime"] = {k: v for k, v in prov["runtime"].items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps([recs, prov], sort_keys=True).encode()).hexdigest()


# A non-default value per config field (every field must be listed: a new field without
# an entry fails the test). A (value, [overrides]) pair is compared against a base run
# with the same extra overrides (a field that acts only in longer runs).
def _sweep_values(tmp: Path, cache: Path) -> dict[str, object]:
    from psfl.models import create_model, save_model_checkpoint

    data = _fmnist_dir(tmp / "data")
    ckpt = tmp / "tiny-M.pt"
    save_model_checkpoint(create_model("tiny-M", img_size=28, in_chans=1), ckpt)
    clf = tmp / "clf.pt"
    from psfl.evaluate import create_classifier

    torch.manual_seed(5)
    torch.save({"arch": "cnn", "state_dict": create_classifier("cnn", 1, 10, 28).state_dict(), "num_classes": 10,
                "in_chans": 1, "img_size": 28}, clf)
    # scorer cnn seed 0 (the tiny run's loss classifier, cached) beside a loss classifier of seed 1
    cnn_scorer_s0 = ["evaluator.seed=1", 'evaluator.score_arch="cnn"', "evaluator.score_seed=0"]
    return {
        "method": '"fedavg"', "seed": "1", "rounds": "2", "threads": "2",
        "data.dataset": '"mnist"', "data.source": '"npz"', "data.data_dir": f'"{data}"', "data.num_clients": "4",
        "data.scheme": '"iid"', "data.alpha": "0.3", "data.sizes": '"none"', "data.local_test_fraction": "0.4",
        "data.min_client_size": "5000", "data.eval_samples": "24", "data.local_eval_samples": "8",
        "data.validation_samples": "570",
        "model.family": '"cpu"', "model.student": '"cpu-CSC"', "model.mentor_rule": '"uniform-M"',
        "model.mentors": '["L", "M", "M"]', "model.mentor_init": f'{{M = "{ckpt}"}}',
        "model.bandwidth_ratio": '"1/6"',
        "train.local_steps": "3", "train.local_epochs": "1", "train.batch_size": "8", "train.optimizer": '"adam"',
        "train.lr": "0.03", "train.student_lr": "0.01", "train.momentum": "0.5", "train.weight_decay": "0.01",
        "train.grad_clip": "0.1", "train.temperature": "3.0", "train.eps": "0.5", "train.mse_weight": "4.0",
        "train.mse_space": '"unit"',
        "channel.name": '"rayleigh"', "channel.equalizer": '"zf"', "channel.rician_k": "1.0",
        "channel.snr_trace": '"fixed"', "channel.snr_min_db": "5.0", "channel.snr_max_db": "15.0",
        "channel.eval_snr_db": "0.0",
        "agp.enabled": "false", "agp.psi_min_db": "-5.0", "agp.psi_max_db": "30.0", "agp.zeta_min": "0.7",
        "agp.zeta_max": "0.6", "agp.prune_biases": "true", "agp.warmup_rounds": "1", "agp.score": '"per_layer"',
        "agp.layer_floor": "0.5", "agp.bn_recalibration": "2",
        # a regrown weight's value only matters once zeta has fallen: compared over 3 rounds
        "agp.regrow": ('"dense"', ["rounds=3"]),
        "train.distill_weight": "0.5", "train.semantic_weight": "2.0",
        "energy.bandwidth_hz": "2e6", "energy.power_w": "0.2",
        # the screen binds only on outliers: a tight bound rejects the largest honest upload
        "server.max_norm_ratio": "1.01",
        "server.min_clients": ("3", ["server.max_norm_ratio=1.01"]),  # then too few: the run stops (exit 3)
        "server.aggregation": '"median"', "server.trim": ("0.4", ['server.aggregation="trimmed_mean"']),
        # secure aggregation runs on Flower only (tests/test_secagg.py): in process it is refused,
        # and its options alone are inert, so refused too
        "server.secure_aggregation": "true", "server.secagg_clip": "4", "server.secagg_shares": "0.5",
        "server.secagg_threshold": "0.8",
        "privacy.clip": "0.5", "privacy.noise_multiplier": ("0.5", ["privacy.clip=0.5"]),
        "privacy.delta": ("1e-3", ["privacy.clip=0.5", "privacy.noise_multiplier=0.5"]),
        # Every training of a classifier costs seconds (a lenet twice a cnn) and the cache is
        # keyed by arch, epochs and seed, not by role, so the contexts make the group train
        # two: cnn seed 1 and cnn 2 epochs; the loss classifier and the scorer of one run
        # must differ in arch or seed (else it is refused), which the contexts keep in every run
        "evaluator.arch": ('"lenet"', cnn_scorer_s0),  # lenet seed 1 = the tiny run's scorer (cached)
        "evaluator.epochs": "2", "evaluator.seed": "1", "evaluator.checkpoint": f'"{clf}"',
        "evaluator.score_arch": '"cnn"', "evaluator.score_epochs": ("2", cnn_scorer_s0),
        "evaluator.score_seed": ("0", ['evaluator.arch="lenet"', "evaluator.seed=1", 'evaluator.score_arch="cnn"']),
        "evaluator.score_checkpoint": f'"{clf}"', "evaluator.cache_dir": f'"{_cache_copy(cache, tmp / "other-cache")}"',
        "method_options": "{psfl = {distill = false}}",
    }


def _all_fields(cls=RunConfig, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = type(getattr(RunConfig(), f.name))
            yield from _all_fields(sub, f"{f.name}.")
        else:
            yield f"{prefix}{f.name}"


SWEEP_METHODS = ["psfl"] + [pytest.param(m, marks=pytest.mark.slow) for m in
                            ("psfl-no-pld", "psfl-no-agp", "fedavg", "fedavg-csc", "stc", "fttq", "fedpaq",
                             "fedprox", "fedkd", "psfl-plus")]


SWEEP_RUN = ["train.local_steps=2", "data.eval_samples=32", "data.local_eval_samples=16"]

# The sweep in parts of about a dozen fields each, so that `make test`'s workers share it.
SWEEP_GROUPS = {"train": ("train",), "data": ("data",), "agp": ("agp",), "evaluator": ("evaluator",),
                "server-channel": ("server", "channel"),
                "rest": ("model", "privacy", "energy", "method", "method_options", "seed", "rounds", "threads")}


def test_the_sweep_covers_every_config_field(tmp_path, cache):
    values = _sweep_values(tmp_path, cache)
    fields = list(_all_fields())
    missing = [f for f in fields if f not in values]
    assert not missing, f"add a sweep value for {missing}"
    grouped = [f for f in fields if f.split(".")[0] in {s for g in SWEEP_GROUPS.values() for s in g}]
    assert grouped == fields, f"add a SWEEP_GROUPS section for {sorted(set(fields) - set(grouped))}"


@pytest.mark.parametrize("group", list(SWEEP_GROUPS))
@pytest.mark.parametrize("method", SWEEP_METHODS)
def test_every_config_field_is_honoured_or_rejected(tmp_path, cache, method, group):
    """A non-default value of each field (of one SWEEP_GROUPS part) either changes the run
    (metrics or recorded provenance) or is rejected with exit 2; no field is silently
    inert. PSFL runs by default; the other methods (`make test-all`) check their
    ``unused_fields``."""
    values = _sweep_values(tmp_path, cache)
    fields = [f for f in _all_fields() if f.split(".")[0] in SWEEP_GROUPS[group]]
    assert fields
    if method != "psfl":
        values["method"] = '"psfl"'  # a change of method must change the run
        values["method_options"] = "{%s}" % {
            "psfl-no-pld": '"psfl-no-pld" = {distill = false}', "psfl-no-agp": '"psfl-no-agp" = {distill = false}',
            "fedavg": 'fedavg = {model = "L"}', "fedavg-csc": '"fedavg-csc" = {model = "M"}',
            "stc": "stc = {p = 0.5}", "fttq": "fttq = {t = 0.2}", "fedpaq": "fedpaq = {s = 4}",
            "fedprox": "fedprox = {mu = 0.5}", "fedkd": "fedkd = {t_start = 0.5, t_end = 0.6}",
            "psfl-plus": "\"psfl-plus\" = {s = 4}"}[method]
    # a tiny run cut further (2 local steps, 32 global and 16 local test images): every field
    # still shows in the metrics or provenance (the digest); 0.84x a tiny run's CPU time (measured)
    base = tiny_overrides(cache, rounds=1, method=method) + SWEEP_RUN
    over = {o.split("=", 1)[0]: o for o in base}

    def run(extra: list[str], name: str) -> tuple[int, str]:
        out = tmp_path / "runs" / name
        args = ["run", "--no-progress", "--no-plots", "--out", str(out)]  # the PNGs cost 40 % of a tiny run
        for o in {**over, **{e.split("=", 1)[0]: e for e in extra}}.values():
            args += ["--set", o]
        rc = main(args)
        return rc, (_digest(out) if rc == 0 else "")

    refs: dict[tuple[str, ...], str] = {}
    inert = []
    for i, field in enumerate(fields):
        value, context = values[field] if isinstance(values[field], tuple) else (values[field], [])
        if tuple(context) not in refs:
            name = f"base{len(refs)}"
            rc, refs[tuple(context)] = run(list(context), name)
            assert rc == 0
            base = tmp_path / "runs" / name
            assert (base / "summary.txt").is_file() and not list(base.glob("*.png"))  # --no-plots
            if method == "psfl" and not context:  # the summary says what each model sends: tiny-M 49 x 8 symbols
                assert "k/n of tiny-M (symbols per image)" in (base / "summary.txt").read_text()
                assert "1/4 (392 real, c = 8)" in (base / "summary.txt").read_text()
        rc, dig = run([*context, f"{field}={value}"], f"f{i}")
        assert rc in (0, 2, 3), (field, rc)  # 3: the setting stopped the run (e.g. too few clients)
        if rc == 0 and dig == refs[tuple(context)]:
            inert.append(field)
    assert not inert, f"fields accepted but without any effect: {inert}"


def test_resume_extends_rounds_and_refuses_other_changes(tmp_path, reference_run, capsys):
    _, full = reference_run(3)
    part = tmp_path / "part"
    reference_run(2, copy_to=part)
    assert main(["run", "--resume", str(part), "--no-progress", "--no-plots", "--set", "rounds=3"]) == 0
    assert strip_timing(read_records(part / "metrics.jsonl")) == strip_timing(full)
    assert "rounds = 3" in (part / "config.toml").read_text()
    prov = json.loads((part / "provenance.json").read_text())
    assert prov["resumes"][0]["at_round"] == 2
    capsys.readouterr()
    assert main(["run", "--resume", str(part), "--no-progress", "--set", "train.lr=0.5"]) == 2
    assert "cannot change train.lr" in capsys.readouterr().err
    with pytest.raises(PsflError, match="below the 3 rounds"):
        resume_config(part, ["rounds=1"])
    # The same config building other models (a run from before the presets' default k/n,
    # or a preset whose c changed) is refused, never resumed into other weights.
    prov = json.loads((part / "provenance.json").read_text())
    prov["models"]["tiny-M"]["channel_dim"] += 2
    (part / "provenance.json").write_text(json.dumps(prov))
    capsys.readouterr()
    assert main(["run", "--resume", str(part), "--no-progress", "--set", "rounds=4"]) == 2
    assert "tiny-M was built with c = 10" in capsys.readouterr().err
    del prov["models"]
    (part / "provenance.json").write_text(json.dumps(prov))
    assert main(["run", "--resume", str(part), "--no-progress", "--set", "rounds=4"]) == 2
    assert "records no models" in capsys.readouterr().err


def test_data_provenance_relative_dir_and_fingerprint_check(tmp_path, cache, capsys, monkeypatch):
    data = _fmnist_dir(tmp_path / "d" / "data")
    monkeypatch.chdir(tmp_path / "d")
    run_dir = tmp_path / "run"
    args = ["run", "--no-progress", "--no-plots", "--out", str(run_dir), "--data-dir", "data"]
    for o in tiny_overrides(cache, rounds=1):
        args += ["--set", o]
    assert main(args) == 0
    cfg = resume_config(run_dir)
    assert cfg.data.data_dir == str(data.resolve()) and cfg.data.source == "npz"  # stored absolute
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert len(prov["data"]["fingerprint"]) == 32 and len(prov["partition"]["fingerprint"]) == 32
    monkeypatch.chdir(tmp_path)  # resuming from elsewhere reads the same file
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--no-plots", "--set", "rounds=2"]) == 0
    # The same path with other contents: refused, never silently trained on.
    z = dict(np.load(data / "fashion_mnist.npz"))
    z["x_train"] = z["x_train"][::-1].copy()
    np.savez(data / "fashion_mnist.npz", **z)
    from psfl.data import clear_dataset_cache

    clear_dataset_cache()
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--set", "rounds=3"]) == 2
    err = capsys.readouterr().err
    assert "dataset arrays differ" in err
    assert "training one" not in err  # refused before any work: no evaluator trained on the changed data


def test_explicit_data_dir_without_dataset_exits_2_and_bundled_is_announced(tmp_path, cache, capsys):
    assert main(["run", "--no-progress", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fashion_mnist.npz not found" in err and not (tmp_path / "x").exists()
    args = ["run", "--no-progress", "--out", str(tmp_path / "b")]
    for o in tiny_overrides(cache, rounds=1):
        args += ["--set", o]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "bundled fashion_mnist sample" in first
    assert 'source = "bundled"' in (tmp_path / "b" / "config.toml").read_text()
    # `psfl run` draws its figures (the other tests here mostly pass --no-plots)
    pngs = {p.name: p.stat().st_size for p in (tmp_path / "b").glob("*.png")}
    assert set(pngs) == {"loss.png", "accuracy.png", "energy.png", "psnr.png"} and min(pngs.values()) > 10_000, pngs


def test_run_records_how_it_was_made(tmp_path, cache):
    run_federated(load_config(None, tiny_overrides(cache, rounds=1)), tmp_path / "r", progress=False,
                  command=["psfl", "run", "--x"])
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    rt = prov["runtime"]
    assert rt["torch_version"] == torch.__version__ and rt["device"] == "cpu" and rt["threads"] == 1
    assert rt["command"] == ["psfl", "run", "--x"] and rt["psfl_version"]
    assert "git_commit" in rt
    ev = prov["evaluators"]
    assert ev["loss_classifier"]["arch"] == "cnn" and ev["scorer"]["arch"] == "lenet"
    assert ev["loss_classifier"]["weights_blake2b"] != ev["scorer"]["weights_blake2b"]
    for e in ev.values():
        assert 0.5 < e["test_accuracy"] <= 1 and e["epochs"] == 1 and "seed" in e and "AdamW" in e["recipe"]
    b = prov["baselines"]
    assert set(b) == {"constant", "dataset_mean", "class_mean"}
    assert b["constant"]["psnr"] < b["dataset_mean"]["psnr"] < b["class_mean"]["psnr"]
    # the accuracy baselines are those of the labels of the scored images, recomputed here
    # from the run's data alone (as psfl tune does) and by hand from the seeded subset
    from psfl.data import load_dataset
    from psfl.methods.base import global_accuracy_baselines, global_test_subset

    cfg = load_config(None, tiny_overrides(cache, rounds=1))
    y = np.asarray(load_dataset("fashion_mnist").y_test)[global_test_subset(1000, 64, cfg.seed).numpy()]
    assert len(y) == prov["global_test_images"] == 64
    share = np.bincount(y, minlength=10).max() / 64
    assert prov["accuracy_baselines"] == {"majority_class": pytest.approx(share), "uniform": 0.1}
    assert global_accuracy_baselines(cfg) == (prov["accuracy_baselines"], 64)
    from psfl.experiments.report import summary_rows

    rows = dict(summary_rows(read_records(tmp_path / "r" / "metrics.jsonl"), tmp_path / "r"))
    assert rows["  baseline: one class for every image (the most frequent)"] == f"{share:.4f}"


def test_divergence_stops_with_exit_3_and_keeps_completed_rounds(tmp_path, cache, capsys):
    run_dir = tmp_path / "r"
    run_federated(load_config(None, tiny_overrides(cache, rounds=2)), run_dir, progress=False)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    key = next(k for k, v in ckpt["server"]["global"].items() if v.is_floating_point() and v.ndim >= 2)
    ckpt["server"]["global"][key].view(-1)[0] = float("nan")
    from psfl.runners.store import save_checkpoint

    save_checkpoint(ckpt, run_dir)  # a valid checkpoint (checksum and all) holding a NaN weight
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--set", "rounds=4"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "round 3" in err[0] and "client 0" in err[0] and "non-finite" in err[0]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1]
    for x in lines:  # strict JSON: NaN/Infinity never appear as numbers
        json.loads(x, parse_constant=lambda c: pytest.fail(f"non-finite {c} in metrics"))


def test_lr_that_blows_up_is_caught(tmp_path, cache):
    cfg = load_config(None, tiny_overrides(cache, rounds=2, method="fedavg") + ["train.lr=1e30", "train.grad_clip=0"])
    with pytest.raises(DivergenceError, match="round 1, client 0: non-finite"):
        run_federated(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # no round finished: a failed start leaves no folder


@pytest.mark.parametrize("override, message", [
    ("method_options.psfl.distil=false", "method_options.psfl.distil"),
    ("method_options.stc.p=2", "method_options.stc.p"),
    ("method_options.fedpaq.s=1.5", "method_options.fedpaq.s"),
    ("method_options.nosuch.x=1", "method_options.nosuch"),
    ("channel.name=\"foo\"", "channel.name"),
    ("train.lr=inf", "train.lr"),
])
def test_bad_settings_exit_2_naming_the_field(override, message, capsys):
    assert main(["run", "--no-progress", "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mentor_init_per_tier(tmp_path, cache):
    from psfl.methods import METHODS, build_env
    from psfl.models import create_model, save_model_checkpoint

    torch.manual_seed(3)
    m = create_model("tiny-M", img_size=28, in_chans=1)
    save_model_checkpoint(m, tmp_path / "m.pt")
    cfg = load_config(None, tiny_overrides(cache, rounds=1) + ["model.mentors=M,L,M",
                                                                f'model.mentor_init.M="{tmp_path / "m.pt"}"'])
    env = build_env(cfg, progress=False)
    method = METHODS.get("psfl")(env, options_for(cfg))
    s0, s1 = method.init_client(0), method.init_client(1)
    assert all(torch.equal(s0["mentor"][k], v) for k, v in m.state_dict().items())  # M from the file
    assert not all(torch.equal(s1["mentor"].get(k, v), v) for k, v in m.state_dict().items() if k in s1["mentor"])
    bad = load_config(None, tiny_overrides(cache, rounds=1) + ["model.mentors=M,L,M",
                                                               f'model.mentor_init.L="{tmp_path / "m.pt"}"'])
    with pytest.raises(PsflError, match=r"mentor_init\.L: .* does not fit the L mentor 'tiny-L'"):
        METHODS.get("psfl")(build_env(bad, progress=False), options_for(bad))


# ------------------------------------------------------------------ scores never touch training images
def _row_hashes(x: torch.Tensor) -> set[bytes]:
    return {hashlib.blake2b(r.numpy().tobytes(), digest_size=12).digest() for r in x.reshape(x.shape[0], -1)}


@pytest.fixture(scope="module")
def env(cache):
    from psfl.methods import build_env

    return build_env(load_config(None, tiny_overrides(cache, rounds=1)), progress=False)


def test_global_and_local_test_images_come_from_the_test_split(env):
    from psfl import data as D

    ds = D.load_dataset("fashion_mnist")
    prepared = D.prepare(ds, D.INPUT_PRESETS.get("native"))
    test = _row_hashes(prepared.x_test)
    assert _row_hashes(env.evaluators.test_x) <= test
    for c in env.data.clients:
        assert len(c.x_test) > 0 and _row_hashes(c.x_test) <= test
        assert not (_row_hashes(c.x_test) & _row_hashes(c.x))


class Always0(torch.nn.Module):
    """A 'classifier' that always says class 0."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 10)
        out[:, 0] = 1
        return out


@pytest.mark.parametrize("method", ["psfl", "psfl-no-pld", "fedavg", "stc", "fttq", "fedpaq"])
def test_local_accuracy_is_scored_on_test_images_by_the_scorer(env, method):
    """Behavioural check, whatever code path computes them: relabel client 1's local test
    set as class 0 and make the scorer always answer 0. Every local accuracy must then be
    exactly 1; scored on training images (several classes) or by the loss classifier it
    would not be."""
    from psfl.methods import METHODS

    c = env.data.clients[1]
    assert (c.y != 0).any()
    saved = c.y_test.clone()
    probe = dataclasses.replace(env, evaluators=dataclasses.replace(env.evaluators, scorer=Always0()))
    cfg = dataclasses.replace(env.cfg, method=method)
    try:
        c.y_test.zero_()
        m = METHODS.get(method)(probe, options_for(cfg, method), cfg)
        m.init_server()
        payload, _ = m.broadcast(0, np.full(3, 10.0))
        res = m.client_update(1, m.init_client(1), 0, payload, 10.0, torch.Generator().manual_seed(0))
    finally:
        c.y_test.copy_(saved)
    accs = {k: v for k, v in res.metrics.items() if k.endswith("_acc")}
    assert "local_acc" in accs and all(v == 1.0 for v in accs.values()), accs


def test_headline_accuracy_is_the_scorers(env):
    """Global accuracy comes from the scorer, not from the classifier inside the loss."""
    from psfl.methods import METHODS
    from psfl.runners.inprocess import evaluate_global

    probe = dataclasses.replace(env, evaluators=dataclasses.replace(env.evaluators, scorer=Always0()))
    m = METHODS.get("fedavg")(probe, options_for(env.cfg, "fedavg"))
    m.init_server()
    g = evaluate_global(m, probe, 0)
    assert g["accuracy"] == pytest.approx(float((env.evaluators.test_y == 0).float().mean()))
    assert "loss_clf_accuracy" in g


def test_channel_config_reaches_every_method(cache):
    from psfl.channel import Rician
    from psfl.methods import METHODS, build_env

    cfg = load_config(None, tiny_overrides(cache, rounds=1) + ['channel.name="rician"', "channel.rician_k=1.5",
                                                               'channel.equalizer="zf"'])
    env = build_env(cfg, progress=False)
    for name in METHODS.names():
        m = METHODS.get(name)(env, options_for(cfg, name))
        m.init_server()
        ch = m.global_model().channel
        assert isinstance(ch, Rician) and ch.k_factor == 1.5 and ch.equalize == "zf", name
    for preset, model in env.models.models().items():
        assert model.channel is env.models.channel, preset


def test_git_commit_marks_code_changes_dirty_but_not_results(tmp_path):
    """``+dirty`` names uncommitted code, not the outputs psfl itself writes under results/:
    a figure command redrawing ten folders must not call the code it ran uncommitted."""
    import subprocess

    from psfl.runners.inprocess import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "results" / "fig4").mkdir(parents=True)
    (repo / "src" / "code.py").write_text("x = 1\n")
    (repo / "results" / "fig4" / "curves.csv").write_text("a\n")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo / "src") == head
    (repo / "results" / "fig4" / "curves.csv").write_text("b\n")  # psfl's own output changed
    (repo / "src" / "new.py").write_text("untracked\n")
    assert git_commit(repo / "src") == head
    (repo / "src" / "code.py").write_text("x = 2\n")  # the code changed
    assert git_commit(repo / "results") == head + "+dirty"
    (tmp_path / "plain").mkdir()  # no checkout at all
    assert git_commit(tmp_path / "plain") is None
