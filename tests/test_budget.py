"""`psfl reproduce --dry-run`'s compute: recorded round times and a projection from runs of
the same cost (psfl.experiments.budget), checked against hand sums."""
import copy
import json
from pathlib import Path

import pytest

from psfl.config import dump_config, load_config
from psfl.experiments.budget import budget_lines, cost_key, makespan, project
from psfl.experiments.reproduce import load_experiment, load_scale, plan
from test_reproduce import exp_dir  # noqa: F401  (fixture: the experiments with a tiny scale)


def write_rounds(folder: Path, times, cfg=None, models=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"round": i, "time_s": t}) + "\n"
                                                  for i, t in enumerate(times)))
    if cfg is not None:
        (folder / "config.toml").write_text(dump_config(cfg))
    if models is not None:
        (folder / "provenance.json").write_text(json.dumps({"models": models}))


def test_makespan_hands_each_run_to_the_worker_free_first():
    assert makespan([3, 1, 1, 1], 2) == 3  # one worker takes 3, the other the three 1s
    assert makespan([2, 2, 3], 2) == 5  # the 3 waits for a worker at 2
    assert makespan([2, 2, 3], 1) == 7 and makespan([], 2) == 0
    assert makespan([1, 1, 1, 1], 4) == 1


@pytest.fixture()
def runs(exp_dir, tmp_path):  # noqa: F811
    """Fig. 8's planned runs at the tiny scale (rounds = 2): PSFL at r = 0.3, 0.6, 0.9, seeds 0-1."""
    exps = [load_experiment("fig8", exp_dir)]
    return plan(exps, load_scale("tiny", exp_dir), [0, 1], tmp_path / "runs", ["mnist"])


def test_projection_uses_own_rounds_then_runs_of_the_same_cost(runs, tmp_path):
    by = {r.key: r for r in runs}
    assert len(runs) == 6 and all(r.cfg.rounds == 2 for r in runs)
    # r = 0.9 seed 0 finished in 10 + 14 s; r = 0.3 seed 0 has one round of 30 s
    write_rounds(by["mnist/psfl/seed0"].path, [10.0, 14.0])
    write_rounds(by["mnist/psfl+data.alpha=0.3/seed0"].path, [30.0])
    costs = {c.key: c for c in project(runs)}
    done = costs["mnist/psfl/seed0"]
    assert (done.done, done.spent_s, done.rest_s, done.source) == (2, 24.0, 0.0, "own rounds")
    half = costs["mnist/psfl+data.alpha=0.3/seed0"]
    assert (half.done, half.spent_s, half.rest_s) == (1, 30.0, 30.0)  # one more round at its own 30 s
    # Dirichlet r does not change a round's cost: a new run takes the pooled mean of both
    # references, (10 + 14 + 30) / 3 = 18 s per round
    new = costs["mnist/psfl+data.alpha=0.6/seed1"]
    assert new.done == 0 and new.per_round_s == pytest.approx(18.0) and new.rest_s == pytest.approx(36.0)
    assert new.source == "2 runs of the same cost"
    lines = budget_lines(list(costs.values()), 2, {r.key: r.dataset for r in runs})
    # rest: 0 + 30 + 4 new runs x 36 s = 174 s; recorded 54 s
    all_row = next(line for line in lines if line.strip().startswith("all")).split()
    assert all_row[1:5] == ["6", "1", f"{54 / 3600:.2f}", f"{174 / 3600:.2f}"]


def test_runs_of_another_cost_or_with_other_models_are_no_reference(runs, tmp_path):
    by = {r.key: r for r in runs}
    # another run of fewer local steps costs less per round: not a reference
    cheap = load_config(None, ["train.local_steps=1"], base=copy.deepcopy(by["mnist/psfl/seed0"].cfg))
    assert cost_key(cheap) != cost_key(by["mnist/psfl/seed0"].cfg)
    write_rounds(tmp_path / "other" / "a" / "seed0", [5.0], cfg=cheap)
    # a stale run (its stored models predate today's presets) is no reference, not even for itself
    write_rounds(by["mnist/psfl/seed1"].path, [99.0], models={})
    costs = {c.key: c for c in project(runs, [tmp_path / "other"])}
    assert all(c.rest_s is None and c.source == "" for c in costs.values())
    lines = budget_lines(list(costs.values()), 2, {r.key: r.dataset for r in runs})
    assert "6 runs without a reference" in lines[-1]
    # the same cost under --timings is one: a learning rate does not change a round's cost
    same = load_config(None, ["train.lr=0.5"], base=copy.deepcopy(by["mnist/psfl/seed0"].cfg))
    write_rounds(tmp_path / "other" / "b" / "seed0", [8.0, 12.0], cfg=same)
    costs = {c.key: c for c in project(runs, [tmp_path / "other"])}
    assert costs["mnist/psfl/seed0"].rest_s == pytest.approx(20.0)
    assert costs["mnist/psfl/seed1"].done == 0  # its stale rounds are not counted as done


def test_dry_run_prints_the_compute(exp_dir, tmp_path, capsys):  # noqa: F811
    import shutil

    from psfl.cli import main
    from psfl.data import DATASETS
    from psfl.data.datasets import bundled_path

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(bundled_path(DATASETS.get("fashion_mnist")), data / "fashion_mnist.npz")
    args = ["reproduce", "fig8", "--scale", "tiny", "--experiments", str(exp_dir), "--seeds", "0",
            "--datasets", "fashion_mnist", "--data-dir", str(data), "--out", str(tmp_path / "out"), "--dry-run"]
    assert main([*args, "--jobs", "2", "--timings", str(data)]) == 0
    out = capsys.readouterr().out
    assert "compute (core-hours" in out and "3 (e.g. fashion_mnist/psfl" in out and "the rest at --jobs 2" in out
    assert main([*args, "--timings", str(tmp_path / "nowhere")]) != 0
    assert "--timings" in capsys.readouterr().err
