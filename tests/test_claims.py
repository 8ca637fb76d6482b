"""The claim rule of psfl.experiments.claims against hand computations."""
import json
import math

import pytest

from psfl.experiments.claims import Link, judge, link, overall
from psfl.experiments.reproduce import load_experiment
from psfl.experiments.figures import FigureInput, panel_notes


def rec(acc, mentor=None, student=None, energy=1.0):
    clients = [{"cid": 0, "local_acc": acc, "mentor_acc": mentor, "student_acc": student}]
    return {"global": {"accuracy": acc, "loss": 1 - acc}, "mean_local_acc": acc, "energy_j": energy,
            "clients": clients}


def runs(values, rounds=6, **kw):
    """{seed: records}: a flat curve at each seed's value (the last-5 mean is the value)."""
    return {s: [rec(v, **kw) for _ in range(rounds)] for s, v in enumerate(values)}


def test_link_verdicts():
    assert Link("a", "b", ">", 0.10, 0.02, 3).verdict == "holds"
    assert Link("a", "b", ">", 0.03, 0.02, 3).verdict == "within noise"
    assert Link("a", "b", ">", -0.05, 0.02, 3).verdict == "reversed"
    assert Link("a", "b", ">=", -0.03, 0.02, 3).verdict == "holds (within noise)"
    assert Link("a", "b", "<", -0.05, 0.02, 3).verdict == "holds"  # lower is better
    assert Link("a", "b", ">", 0.01, math.nan, 1).verdict == "holds (no error bar)"
    assert overall([Link("a", "b", ">", 0.1, 0.01, 3), Link("b", "c", ">", -0.1, 0.01, 3)]) == "partly"


def test_paired_within_a_run_and_welch_between_runs():
    exp = load_experiment("fig10")
    inp = FigureInput(exp, ["mnist"], {}, {("mnist", "PSFL"): runs([0.5, 0.6, 0.7]),
                                           ("mnist", "PSFL w/o PLD"): runs([0.4, 0.5, 0.6])},
                      {}, {"mnist": 6})
    lk = link(inp, "mnist", ("PSFL", "global_accuracy"), ("PSFL w/o PLD", "global_accuracy"), ">")
    # Welch: se = sqrt(0.01/3 + 0.01/3) = 0.0816 > 0.1 / 2: within noise
    assert lk.d == pytest.approx(0.1) and lk.se == pytest.approx(math.sqrt(2 * 0.01 / 3))
    assert lk.verdict == "within noise"
    exp5 = load_experiment("fig5")
    inp5 = FigureInput(exp5, ["cifar10"], {}, {("cifar10", "PSFL"): {
        s: [rec(0.5, mentor=m, student=m - 0.1) for _ in range(6)] for s, m in enumerate([0.5, 0.6, 0.7])}},
        {}, {"cifar10": 6})
    lk = link(inp5, "cifar10", ("PSFL", "mentor_accuracy"), ("PSFL", "student_accuracy"), ">=")
    assert lk.d == pytest.approx(0.1) and lk.se == pytest.approx(0.0, abs=1e-12) and lk.ok  # paired: same runs
    rows = judge({"fig5": inp5})
    assert rows[0]["verdict"] == "holds" and "mentor 0.600 ± 0.100 (n=3)" in rows[0]["numbers"]


def test_unfinished_runs_do_not_count():
    exp = load_experiment("fig10")
    short = {0: [rec(0.9)] * 3}  # 3 of 6 rounds
    inp = FigureInput(exp, ["mnist"], {}, {("mnist", "PSFL"): short, ("mnist", "PSFL w/o PLD"): runs([0.4])},
                      {}, {"mnist": 6})
    lk = link(inp, "mnist", ("PSFL", "global_accuracy"), ("PSFL w/o PLD", "global_accuracy"), ">")
    assert lk.verdict == "missing" and overall([lk]) == "not run"


def _prov(folder, loss_digest, scorer_digest):
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps({"evaluators": {
        "loss_classifier": {"weights_blake2b": loss_digest}, "scorer": {"weights_blake2b": scorer_digest}}}))
    return folder


def test_runs_with_other_evaluators_are_not_compared(tmp_path):
    """A gap that holds when every run used the same classifiers becomes 'not comparable'
    (and stops counting as holding) when one seed of one series was scored by another
    scorer, or trained against another loss classifier."""
    exp = load_experiment("fig10")
    records = {("mnist", "PSFL"): runs([0.7, 0.71, 0.72]), ("mnist", "PSFL w/o PLD"): runs([0.4, 0.41, 0.42])}

    def judged(digests):
        paths = {key: {s: _prov(tmp_path / f"{len(list(tmp_path.iterdir()))}", *digests.get((key[1], s), ("L", "S")))
                       for s in range(3)} for key in records}
        inp = FigureInput(exp, ["mnist"], {}, records, paths, {"mnist": 6})
        notes = "".join(panel_notes(inp))
        return link(inp, "mnist", ("PSFL", "global_accuracy"), ("PSFL w/o PLD", "global_accuracy"), ">"), notes

    same, notes = judged({})
    assert same.verdict == "holds" and "different evaluators" not in notes
    other_scorer, notes = judged({("PSFL w/o PLD", 2): ("L", "S2")})
    assert other_scorer.verdict.startswith("not comparable") and not other_scorer.ok
    assert overall([other_scorer, same]).startswith("not comparable")
    assert "mnist: runs with different evaluators" in notes and "L/S2" in notes  # the figure's table says it too
    assert judged({("PSFL", 0): ("L2", "S")})[0].verdict.startswith("not comparable")
