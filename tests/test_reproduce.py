"""`psfl reproduce`: experiment files, shared and resumable runs, figures, missing data."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from psfl.cli import main
from psfl.utils.errors import PsflError
from psfl.experiments.reproduce import EXPERIMENTS_DIR, experiment_names, load_experiment, load_scale, plan

TINY_SCALE = """
[config]
rounds = 2
threads = 1
[config.data]
num_clients = 3
eval_samples = 64
local_eval_samples = 32
[config.model]
family = "tiny"
[config.train]
local_steps = 2
batch_size = 16
[config.agp]
warmup_rounds = 0
[config.evaluator]
epochs = 1
score_epochs = 1
"""


@pytest.fixture()
def exp_dir(tmp_path):
    """The repository's experiment files with a tiny scale next to them."""
    d = tmp_path / "experiments"
    shutil.copytree(EXPERIMENTS_DIR, d)
    (d / "scale-tiny.toml").write_text(TINY_SCALE)
    return d


def synthetic_cifar100(path: Path, n_train: int = 400, n_test: int = 120) -> Path:
    """A small file in CIFAR-100's Keras layout (32x32x3 uint8, labels (N, 1), 100 classes)."""
    g = np.random.default_rng(0)

    def part(n):
        y = np.arange(n) % 100
        x = g.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8)
        x[np.arange(n), (y // 10) * 3, :, y % 3] = 255  # a class-dependent stripe
        return x, y.reshape(-1, 1).astype(np.uint8)

    (xtr, ytr), (xte, yte) = part(n_train), part(n_test)
    np.savez(path / "cifar100.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def test_experiment_files_load_and_runs_are_shared():
    names = experiment_names()
    assert names[:10] == [f"fig{i}" for i in range(4, 14)] and "recon" in names
    exps = [load_experiment(n) for n in names]
    scale = load_scale("cpu")
    runs = plan(exps, scale, [0, 1, 2], Path("/r"), ["mnist", "fashion_mnist", "cifar10", "cifar100"])
    # per dataset: psfl (r = 0.9: Figs. 4-5, 7-12 share it), r = 0.3, r = 0.6, no-agp, no-pld;
    # Figs. 11-13 add psfl-plus and the four contenders on Fashion-MNIST and CIFAR-10 only
    assert len(runs) == 3 * (4 * 5 + 2 * 5)
    psfl = [r for r in runs if r.dataset == "cifar10" and r.seed == 0 and r.name == "psfl"]
    assert len(psfl) == 1 and ("fig4", "PSFL") in psfl[0].uses and ("fig8", "r = 0.9") in psfl[0].uses
    assert ("fig12", "PSFL") in psfl[0].uses
    assert {r.name for r in runs if r.dataset == "mnist"} == {
        "psfl", "psfl+data.alpha=0.3", "psfl+data.alpha=0.6", "psfl-no-agp", "psfl-no-pld"}
    # the scale's budget, with its per-dataset cuts (issue 27: MNIST and CIFAR-10 at 20 rounds)
    rounds = {"mnist": 20, "fashion_mnist": 40, "cifar10": 20, "cifar100": 40}
    assert scale.config["rounds"] == 40 and all(r.cfg.rounds == rounds[r.dataset] for r in runs)
    assert all(r.cfg.model.family == "cpu" for r in runs)
    assert len({r.path for r in runs}) == len(runs)


def test_tail_slope_is_the_least_squares_slope_of_the_last_rounds():
    from psfl.experiments.figures import flat_note, tail_slope

    g = np.random.default_rng(0)
    v = g.random((3, 25))
    want = [np.polyfit(np.arange(10), row[-10:], 1)[0] for row in v]  # an independent fit
    assert tail_slope(v) == pytest.approx(want)
    assert tail_slope(np.arange(6.0)[None]) == pytest.approx([1.0])  # fewer rounds: all of them
    assert flat_note(np.array([0.004, 0.005])) == "flat" and flat_note(np.array([0.01])) == "rising"
    assert flat_note(np.array([-0.02])) == "falling" and flat_note(np.zeros(0)) == "-"


def test_bad_experiment_files_are_rejected(exp_dir):
    (exp_dir / "bad.toml").write_text('title = "x"\nplot = "curves"\ndatasets = ["mnist"]\nmetrics = ["acc"]\n'
                                      '[[series]]\nlabel = "a"\nmethod = "psfl"\n')
    with pytest.raises(PsflError, match="unknown dataset, metric or method 'acc'"):
        load_experiment("bad", exp_dir)
    (exp_dir / "bad.toml").write_text('title = "x"\nplot = "curves"\ndatasets = ["mnist"]\ncolour = 1\n')
    with pytest.raises(PsflError, match="unknown key.*colour"):
        load_experiment("bad", exp_dir)
    (exp_dir / "bad.toml").write_text('title = "x"\nplot = "curves"\ndatasets = ["mnist"]\nmetrics = ["energy"]\n'
                                      '[[series]]\nlabel = "a"\nmethod = "fedavg"\nset = ["agp.zeta_max=0.5"]\n')
    with pytest.raises(PsflError, match="agp.zeta_max: method 'fedavg' does not read it"):
        plan([load_experiment("bad", exp_dir)], load_scale("tiny", exp_dir), [0], Path("/r"), ["mnist"])
    with pytest.raises(PsflError, match="unknown experiment 'fig99'"):
        load_experiment("fig99", exp_dir)


def test_reproduce_all_tiny_runs_resumes_and_draws(exp_dir, tmp_path, cache, capsys):
    from psfl.config import load_config
    from psfl.data import DATASETS
    from psfl.data.datasets import bundled_path
    from psfl.experiments.reproduce import base_config
    from psfl.runners.inprocess import read_records, run_federated

    data = synthetic_cifar100(tmp_path)
    shutil.copy(bundled_path(DATASETS.get("fashion_mnist")), data / "fashion_mnist.npz")
    out, runs = tmp_path / "results", tmp_path / "results" / "runs"
    argv = ["reproduce", "all", "--experiments", str(exp_dir), "--scale", "tiny", "--seeds", "0",
            "--data-dir", str(data), "--out", str(out), "--no-progress",
            "--set", f"evaluator.cache_dir=\"{cache}\""]
    # one run interrupted after its first round: reproduce must resume it, not restart it
    interrupted = runs / "tiny" / "fashion_mnist" / "psfl-no-pld" / "seed0"
    extra = [f"data.data_dir=\"{data}\"", f"evaluator.cache_dir=\"{cache}\""]
    cfg = load_config(None, ['method="psfl-no-pld"', "seed=0"],
                      base=base_config(load_scale("tiny", exp_dir), "fashion_mnist", extra))
    run_federated(cfg, interrupted, progress=False, stop_after=1, strict=False)
    full = run_federated(cfg, tmp_path / "uninterrupted", progress=False, strict=False).records

    assert main(argv + ["--datasets", "fashion_mnist,cifar100"]) == 0
    log = capsys.readouterr().out
    assert "resume fashion_mnist/psfl-no-pld/seed0" in log and log.count(" start ") == 14  # 15 runs, 1 resumed
    # the classifiers the runs trained against and were scored by are kept beside the results
    kept = sorted(p.name for p in (out / "evaluators").glob("*.pt"))
    assert len(kept) == 4 and all((cache / k).read_bytes() == (out / "evaluators" / k).read_bytes()
                                  for k in kept), kept
    assert {k.split("__")[0] for k in kept} == {"fashion_mnist", "cifar100"} and log.count("kept evaluator") == 4
    timing = ("time_s", "compute_s")
    got = [{k: v for k, v in r.items() if k not in timing} for r in read_records(interrupted / "metrics.jsonl")]
    assert got == [{k: v for k, v in r.items() if k not in timing} for r in full]
    for fig in [f"fig{i}" for i in range(4, 14)] + ["recon"]:
        files = {p.name for p in (out / fig).iterdir()}
        assert {"command.txt", "provenance.json"} <= files and any(f.endswith(".png") for f in files), fig
    curves = (out / "fig8" / "curves.csv").read_text()
    assert "cifar100,r = 0.3,local_accuracy,2,1," in curves and "fashion_mnist,r = 0.9,global_accuracy,1" in curves
    prov4 = json.loads((out / "fig4" / "provenance.json").read_text())
    prov11 = json.loads((out / "fig11" / "provenance.json").read_text())
    shared = {r["run"] for r in prov4["runs"]} & {r["run"] for r in prov11["runs"]}
    assert shared == {str(runs / "tiny" / "fashion_mnist" / "psfl" / "seed0")}
    assert all(r["rounds_done"] == 2 and len(r["data_fingerprint"]) == 32 for r in prov11["runs"])
    assert (out / "recon" / "recon-cifar100.png").is_file() and (out / "recon" / "recon-fashion_mnist.png").is_file()
    recon = (out / "recon" / "reconstructions.csv").read_text().splitlines()
    assert len(recon) == 1 + 3 * (1 + 2)  # cifar100: PSFL x 3 SNRs; fashion_mnist: PSFL and FedAvg x 3 SNRs
    before = {fig: (out / fig / "curves.csv").read_text() for fig in ("fig8", "fig11")}
    assert "| fashion_mnist | FedAvg | 1/1 | tiny-M 1/4 |" in (out / "fig11" / "summary.md").read_text()  # k/n

    # a second call runs nothing and draws the same numbers; restricted to one dataset, it
    # still draws the other's panels from its finished runs
    assert main(argv + ["--datasets", "fashion_mnist"]) == 0
    assert " start " not in capsys.readouterr().out
    assert {fig: (out / fig / "curves.csv").read_text() for fig in before} == before
    # naming one experiment redraws its figure; the claims still cover every experiment's datasets
    claims = (out / "claims.md").read_text()
    assert main(argv[:1] + ["fig11"] + argv[2:] + ["--figures-only"]) == 0
    assert (out / "claims.md").read_text() == claims and "cifar100" in claims
    # convergence: the slope of two rounds is their difference, in claims.md and the summaries
    acc = [r["global"]["accuracy"] for r in read_records(runs / "tiny" / "fashion_mnist" / "fedavg" / "seed0"
                                                         / "metrics.jsonl")]
    slope = f"{acc[1] - acc[0]:+.4f}"
    assert f"| fashion_mnist | fedavg | 2 x 2 | 1/1 | {slope} |" in claims
    assert f"| {slope} |" in (out / "fig11" / "summary.md").read_text()


def test_missing_data_is_skipped_by_default_and_refused_when_asked(exp_dir, tmp_path, capsys):
    argv = ["reproduce", "fig12", "--experiments", str(exp_dir), "--scale", "tiny", "--data-dir", str(tmp_path),
            "--out", str(tmp_path / "o"), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cifar10 not run" in out and "cifar10.npz" in out and "0 runs" in out
    assert main(argv + ["--datasets", "cifar10"]) == 2
    assert "cifar10.npz not found" in capsys.readouterr().err


def test_a_folder_made_with_another_config_is_refused(exp_dir, tmp_path):
    from psfl.config import dump_config
    from psfl.experiments.reproduce import check_existing

    data = tmp_path / "d"
    data.mkdir()
    runs = plan([load_experiment("fig4", exp_dir)], load_scale("tiny", exp_dir), [0], tmp_path / "runs",
                ["fashion_mnist"])
    r = runs[0]
    r.path.mkdir(parents=True)
    other = copy.deepcopy(r.cfg)
    other.train.lr = 0.5
    (r.path / "config.toml").write_text(dump_config(other))
    with pytest.raises(PsflError, match="another config \\(train.lr"):
        check_existing(r)


def test_a_folder_made_with_other_models_is_refused_though_its_config_matches(exp_dir, tmp_path):
    """The same config builds other models since the presets default to a k/n (c = 64
    before): a stored run whose provenance records no channel widths, or other ones, is
    'stale', and reproduce refuses to count or resume it."""
    from psfl.config import dump_config
    from psfl.experiments.reproduce import check_existing, models_problem
    from psfl.runners.inprocess import model_now

    runs = plan([load_experiment("fig4", exp_dir)], load_scale("tiny", exp_dir), [0], tmp_path / "runs",
                ["fashion_mnist"])
    r = runs[0]
    r.path.mkdir(parents=True)
    (r.path / "config.toml").write_text(dump_config(r.cfg))
    assert models_problem(r) is None  # nothing stored yet
    check_existing(r)
    prov = {"data": {}}
    (r.path / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(PsflError, match="other models .*records no models"):
        check_existing(r)
    now = model_now(r.cfg, "tiny-CSC")
    c = now["channel_dim"]
    prov["models"] = {"note": "k/n ...", "tiny-CSC": {**now, "channel_dim": c + 2}}
    (r.path / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(PsflError, match=f"tiny-CSC was built with c = {c + 2} .*, the config builds c = {c} "):
        check_existing(r)
    prov["models"]["tiny-CSC"]["channel_dim"] = c
    (r.path / "provenance.json").write_text(json.dumps(prov))
    assert models_problem(r) is None
    check_existing(r)


def test_a_tuned_scale_gives_each_method_its_choice_without_renaming_the_runs(exp_dir, tmp_path):
    choices = tmp_path / "choices.json"
    choices.write_text(json.dumps({"choices": {"psfl": {"set": ["train.mse_weight=4", "train.student_lr=0.15"]},
                                               "fedavg": {"set": ["train.lr=0.03"]}}}))
    (exp_dir / "scale-tt.toml").write_text(f'extends = "tiny"\ntuned = "{choices}"\n[config]\nrounds = 3\n'
                                           '[tuned_as]\npsfl-no-agp = "psfl"\n')
    scale, plain = load_scale("tt", exp_dir), load_scale("tiny", exp_dir)
    assert scale.config["rounds"] == 3 and scale.config["train"] == plain.config["train"]  # extends, overrides
    runs = {r.name: r for r in plan([load_experiment("fig4", exp_dir)], scale, [0], tmp_path / "runs",
                                    ["fashion_mnist"])}
    assert set(runs) == {r.name for r in plan([load_experiment("fig4", exp_dir)], plain, [0], tmp_path / "runs",
                                              ["fashion_mnist"])}  # the same folder names as untuned
    for r in runs.values():
        assert (r.cfg.train.mse_weight, r.cfg.train.student_lr, r.cfg.rounds) == (4, 0.15, 3)
        assert r.path.parts[-4] == "tt"
    with pytest.raises(PsflError, match="no tuned choice for method 'psfl-no-pld'"):
        plan([load_experiment("fig9", exp_dir)], scale, [0], tmp_path / "runs", ["fashion_mnist"])
    (exp_dir / "scale-tt.toml").write_text(f'extends = "tiny"\ntuned = "{choices}"\n[tuned_as]\nx = "stc"\n')
    with pytest.raises(PsflError, match="no choice for 'stc'"):
        load_scale("tt", exp_dir)


def test_run_lock_refuses_a_second_writer(tmp_path):
    from psfl.utils.lock import RunLockedError, run_lock

    with run_lock(tmp_path) as path:
        assert path.is_file() and str(__import__("os").getpid()) in path.read_text()
        with pytest.raises(RunLockedError, match="being written by process"):
            with run_lock(tmp_path):
                pass
    assert not path.exists()
    with run_lock(tmp_path):  # released: free again
        pass


def test_an_unfinished_run_without_a_checkpoint_is_refused_before_any_work(exp_dir, tmp_path, cache, capsys):
    """A run folder with some rounds but no checkpoint (e.g. copied without it) cannot be
    resumed: reproduce says so and runs nothing, instead of failing midway."""
    from psfl.config import load_config
    from psfl.data import DATASETS
    from psfl.data.datasets import bundled_path
    from psfl.experiments.reproduce import base_config
    from psfl.runners.inprocess import read_records, run_federated

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(bundled_path(DATASETS.get("fashion_mnist")), data / "fashion_mnist.npz")
    folder = tmp_path / "results" / "runs" / "tiny" / "fashion_mnist" / "psfl" / "seed0"
    extra = [f"data.data_dir=\"{data}\"", f"evaluator.cache_dir=\"{cache}\""]
    cfg = load_config(None, ['method="psfl"', "seed=0"], base=base_config(load_scale("tiny", exp_dir), "fashion_mnist", extra))
    run_federated(cfg, folder, progress=False, stop_after=1, strict=False)
    for p in folder.glob("checkpoint*"):
        p.unlink()
    argv = ["reproduce", "fig4", "--experiments", str(exp_dir), "--scale", "tiny", "--seeds", "0", "--datasets",
            "fashion_mnist", "--data-dir", str(data), "--out", str(tmp_path / "results"), "--no-progress",
            "--set", f"evaluator.cache_dir=\"{cache}\""]
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "holds 1 of 2 rounds but no checkpoint" in captured.err and " start " not in captured.out
    assert len(read_records(folder / "metrics.jsonl")) == 1


def test_a_scale_cut_leaves_out_runs_only_the_cut_datasets_need(exp_dir, tmp_path, capsys):
    data = synthetic_cifar100(tmp_path)
    (exp_dir / "scale-cut.toml").write_text('extends = "tiny"\n[experiments.fig7]\ndatasets = ["fashion_mnist"]\n')
    (exp_dir / "scale-cutcut.toml").write_text('extends = "cut"\n')
    assert load_scale("cutcut", exp_dir).cuts == {"fig7": {"datasets": ["fashion_mnist"]}}  # inherited
    argv = ["reproduce", "fig4", "fig7", "--experiments", str(exp_dir), "--seeds", "0,1", "--data-dir", str(data),
            "--datasets", "cifar100", "--out", str(tmp_path / "o"), "--dry-run"]

    def planned(scale: str, *more: str) -> set[str]:
        assert main(argv + ["--scale", scale, *more]) == 0
        return {line.split()[1] for line in capsys.readouterr().out.splitlines() if "  -> " in line}

    every = planned("tiny")
    # fig7's r = 0.3 / 0.6 runs are cut on cifar100; its r = 0.9 run is fig4's too, so it stays
    assert every == {f"cifar100/{n}/seed{s}" for n in ("psfl", "psfl+data.alpha=0.3", "psfl+data.alpha=0.6")
                     for s in (0, 1)}
    assert planned("cut") == {"cifar100/psfl/seed0", "cifar100/psfl/seed1"}
    assert planned("cut", "--full") == every
    assert main(argv + ["--scale", "cut"]) == 0
    assert "cuts fig7: not on mnist, cifar10, cifar100" in capsys.readouterr().out
    (exp_dir / "scale-drop.toml").write_text('extends = "tiny"\n[experiments.fig7]\ndrop = ["r = 0.3"]\n')
    assert planned("drop") == every - {"cifar100/psfl+data.alpha=0.3/seed0", "cifar100/psfl+data.alpha=0.3/seed1"}
    for body, why in [('[experiments.fig77]\ndatasets = ["mnist"]\n', "no such experiment"),
                      ('[experiments.fig12]\ndatasets = ["mnist"]\n', "'mnist' is not a dataset of fig12"),
                      ('[experiments.fig7]\ndrop = ["r = 0.4"]\n', "'r = 0.4' is not a series of fig7"),
                      ('[experiments.fig7]\nsets = ["mnist"]\n', "takes only datasets")]:
        (exp_dir / "scale-bad.toml").write_text('extends = "tiny"\n' + body)
        with pytest.raises(PsflError, match=why):
            load_scale("bad", exp_dir)
