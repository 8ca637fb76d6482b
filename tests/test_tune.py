"""psfl tune: one grid for every method, scored on held-out training images only."""
import json
from pathlib import Path

import pytest

from psfl.cli import main
from psfl.config import load_config
from psfl.experiments.tune import method_points, parse_grid
from psfl.utils.errors import PsflError

from test_runner import tiny_overrides  # noqa: E402


def test_grid_points_drop_the_fields_a_method_does_not_read():
    cfg = load_config(None, ['model.family="tiny"'])
    grid = parse_grid(["train.lr=0.01,0.03", "train.student_lr=0.05,0.1"])
    assert len(method_points(cfg, "psfl", grid)) == 4  # mentors (lr) and student (student_lr)
    assert method_points(cfg, "fedavg", grid) == [{"train.lr": "0.01"}, {"train.lr": "0.03"}]  # GSC-M only
    assert method_points(cfg, "fedavg-csc", grid) == [{"train.student_lr": "0.05"}, {"train.student_lr": "0.1"}]
    for bad in (["train.lr"], ["train.lr="], [], ["a=1", "a=2"]):
        with pytest.raises(PsflError):
            parse_grid(bad)


def test_tune_chooses_the_best_validation_point_and_refuses_the_test_split(tmp_path, cache, capsys, monkeypatch):
    # fedavg-csc last: it does not read train.lr, so a point of psfl leaking into it fails
    base = ["tune", "--methods", "fedavg,psfl,fedavg-csc", "--grid", "train.lr=0.003,0.05", "--last", "2", "--out",
            str(tmp_path), "--no-progress"]
    over = [a for o in tiny_overrides(cache, rounds=2, method="fedavg") for a in ("--set", o)]
    assert main(base + over) == 2 and "validation_samples" in capsys.readouterr().err  # no test-split tuning
    assert main(base + over + ["--set", "data.validation_samples=570"]) == 0
    log = capsys.readouterr().out
    res = json.loads((tmp_path / "choices.json").read_text())
    for method in ("fedavg", "psfl"):
        scores = {}
        for point in ("train.lr=0.003", "train.lr=0.05"):  # recomputed from the runs' own metrics
            run = tmp_path / method / point / "seed0"
            recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            scores[point] = sum(r["global"]["accuracy"] for r in recs[-2:]) / 2
            prov = json.loads((run / "provenance.json").read_text())
            assert prov["data"]["scored_on"].startswith("validation") and prov["data"]["test_images"] == 570
        c = res["choices"][method]
        assert c["points"] == pytest.approx(scores)
        assert c["set"] == [max(scores, key=lambda k: (scores[k], k == "train.lr=0.003"))]
        # chance: the runs' own majority-class share of the 64 scored images + 3 sd, by hand
        p = prov["accuracy_baselines"]["majority_class"]
        assert c["chance"] == pytest.approx({"majority_class": p, "images": 64,
                                             "bound": p + 3 * (p * (1 - p) / 64) ** 0.5})
        assert c["above_chance"] == (c["score"] > c["chance"]["bound"])
        assert (f"psfl tune: {method}: no point rose above chance" in log) == (not c["above_chance"])
    # the same finished runs against a bound of 0 (scoring only): every choice is above it, unflagged
    import psfl.evaluate.baselines as baselines

    monkeypatch.setattr(baselines, "chance_bound", lambda p, n: 0.0)
    assert main(base + over + ["--set", "data.validation_samples=570"]) == 0
    assert "rose above chance" not in capsys.readouterr().out
    assert all(c["above_chance"] for c in json.loads((tmp_path / "choices.json").read_text())["choices"].values())
    assert "| fedavg |" in (tmp_path / "choices.md").read_text() and res["validation_samples"] == 570


def test_tune_adds_a_later_calls_methods_and_refuses_another_budget(tmp_path, cache, monkeypatch):
    over = [a for o in tiny_overrides(cache, rounds=2, method="fedavg") for a in ("--set", o)]
    over += ["--set", "data.validation_samples=570"]
    base = ["tune", "--grid", "train.lr=0.003,0.05", "--last", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(base + ["--methods", "fedavg"] + over) == 0
    first = json.loads((tmp_path / "choices.json").read_text())["choices"]["fedavg"]
    assert main(base + ["--methods", "fedavg-csc"] + over) == 0  # another process's methods, same budget
    res = json.loads((tmp_path / "choices.json").read_text())
    assert list(res["choices"]) == ["fedavg", "fedavg-csc"] and res["choices"]["fedavg"] == first
    rows = (tmp_path / "grid.csv").read_text().splitlines()
    assert sum(r.startswith("fedavg,") for r in rows) == 2 and sum(r.startswith("fedavg-csc,") for r in rows) == 1
    assert "| fedavg |" in (tmp_path / "choices.md").read_text()
    # two processes finishing together: the other one writes its methods after this one
    # scored and before it takes the folder's lock; both must be kept (every run is finished
    # by now, so these calls only score)
    import psfl.utils.lock as lock

    real, others = lock.wait_lock, []

    def meanwhile(path, waiting=""):
        if path.name == ".choices.lock" and not others:
            others.append(None)  # once: the other process's own call takes the lock plainly
            others[0] = main(base + ["--methods", "fedavg-csc"] + over)  # writes fedavg-csc alone
        return real(path, waiting)

    (tmp_path / "choices.json").unlink()
    monkeypatch.setattr(lock, "wait_lock", meanwhile)
    assert main(base + ["--methods", "fedavg"] + over) == 0 and others == [0]
    assert json.loads((tmp_path / "choices.json").read_text())["choices"] == res["choices"]
    monkeypatch.setattr(lock, "wait_lock", real)
    assert main(base[:-1] + ["--last", "1", "--no-progress", "--methods", "stc"] + over) == 2  # other budget
    assert not (tmp_path / "stc").exists()  # refused before any run
    # a call stopped in its second method keeps the first one's choice
    import psfl.runners.inprocess as inprocess

    def stopped(*a, **k):
        raise KeyboardInterrupt

    (tmp_path / "choices.json").unlink()
    monkeypatch.setattr(inprocess, "run_federated", stopped)
    assert main(base + ["--methods", "fedavg,stc"] + over) not in (0, None)  # Ctrl-C: main says "interrupted"
    assert list(json.loads((tmp_path / "choices.json").read_text())["choices"]) == ["fedavg"]


def test_widen_steps_past_the_grid_edge_reusing_the_grids_runs(tmp_path, cache, capsys):
    over = [a for o in tiny_overrides(cache, rounds=2, method="fedavg") for a in ("--set", o)]
    over += ["--set", "data.validation_samples=570"]
    base = ["tune", "--methods", "fedavg", "--grid", "train.lr=0.003,0.01", "--last", "2", "--no-progress"]
    grid_dir, wide, kept = tmp_path / "grid", tmp_path / "wide", tmp_path / "evaluators"
    assert main(base + ["--out", str(grid_dir), "--evaluators", str(kept)] + over) == 0
    prov = json.loads(next(grid_dir.glob("fedavg/*/seed0/provenance.json")).read_text())["evaluators"]
    used = sorted(Path(e["path"]).name for e in prov.values())
    assert sorted(p.name for p in kept.glob("*.pt")) == used  # the scored runs' evaluators, kept
    first = json.loads((grid_dir / "choices.json").read_text())["choices"]["fedavg"]
    assert first["on_edge"] == ["train.lr"] and first["widened"] == {}  # two values: always on an edge
    # on a machine whose cache lacks them, the kept evaluators go into it before the new run
    fresh = tmp_path / "fresh-cache"
    capsys.readouterr()
    assert main(base + ["--out", str(wide), "--widen", "1", "--reuse", str(grid_dir), "--evaluators", str(kept)]
                + over + ["--set", f"evaluator.cache_dir='{fresh}'"]) == 0
    assert sorted(p.name for p in fresh.glob("*.pt")) == used and "training one" not in capsys.readouterr().err
    res = json.loads((wide / "choices.json").read_text())
    c = res["choices"]["fedavg"]
    outward = {"train.lr=0.003": "train.lr=0.0009", "train.lr=0.01": "train.lr=0.03333"}[first["set"][0]]
    assert list(c["widened"]) == [outward] and c["grid_set"] == first["set"] and res["widen"] == 1
    # the grid's points were read from the reused folder, not run again; the new one ran here
    assert sorted(p.name for p in (wide / "fedavg").iterdir()) == [outward]
    metrics = wide / "fedavg" / outward / "seed0" / "metrics.jsonl"
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    new = json.loads((metrics.parent / "provenance.json").read_text())["evaluators"]
    assert [e["weights_blake2b"] for e in new.values()] == [e["weights_blake2b"] for e in prov.values()]
    assert c["widened"][outward] == pytest.approx(sum(r["global"]["accuracy"] for r in recs[-2:]) / 2)
    assert c["points"] == {**first["points"], outward: c["widened"][outward]}
    assert c["set"] == [max(c["points"], key=lambda k: (c["points"][k], k in first["set"]))]
    assert c["on_edge"] == (["train.lr"] if c["set"] == [outward] else [])
    assert "| fedavg |" in (wide / "choices.md").read_text()
    # widening further reads both earlier folders (grid, then the first widening): only the
    # value past the first widening's can run here, and only if that widening moved the choice
    wider = tmp_path / "wider"
    assert main(base + ["--out", str(wider), "--widen", "2", "--reuse", str(grid_dir), "--reuse", str(wide)]
                + over) == 0
    c2 = json.loads((wider / "choices.json").read_text())["choices"]["fedavg"]
    ran = sorted(p.name for p in (wider / "fedavg").iterdir()) if (wider / "fedavg").exists() else []
    assert ran == sorted(set(c2["points"]) - set(c["points"])) and len(ran) == (c["set"] == [outward])
    assert {k: v for k, v in c2["points"].items() if k in c["points"]} == c["points"]
    runs = {r.split(",")[1]: r.split(",")[-1] for r in (wider / "grid.csv").read_text().splitlines()[1:]}
    assert runs[outward].startswith(str(wide)) and runs[first["set"][0]].startswith(str(grid_dir))
    # a reused run must hold the point's config: another local_steps is refused, not scored
    cfgfile = grid_dir / "fedavg" / first["set"][0] / "seed0" / "config.toml"
    cfgfile.write_text(cfgfile.read_text().replace("local_steps = ", "local_steps = 1"))
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "again"), "--widen", "1", "--reuse", str(grid_dir)] + over) == 2
    assert "another config (train.local_steps" in capsys.readouterr().err
