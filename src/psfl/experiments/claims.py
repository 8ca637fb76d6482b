"""The paper's claims of Section V, judged on the runs of `psfl reproduce`.

Each claim compares last-5-round means (one per seed) of two series of a figure. A link
``A > B`` *holds* when the mean difference exceeds twice its standard error (sd of the
paired per-seed differences when both series come from the same runs, Welch's otherwise),
is *reversed* when it is below minus twice that, and is *within noise* otherwise; with one
seed, or for the pooled energy values of Fig. 13, there is no error bar and the sign decides
(said in the table). ``A >= B`` holds unless reversed. A claim over several links or datasets holds when every link holds,
partly when some do, and does not hold when none does. The rule is fixed before looking at
the numbers and is the same for every method. Runs that trained against or were scored by
other classifier weights (their provenance's digests differ) are not compared at all: the
link and the claim say "not comparable".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from psfl.experiments.figures import FigureInput, LAST, curves, evaluators_of, finished_seeds, last_mean


@dataclass
class Link:
    a: str
    b: str
    rel: str  # ">" | ">=" | "<" (lower is better, e.g. energy)
    d: float  # mean(a) - mean(b)
    se: float  # nan with one seed
    n: int
    mixed: bool = False  # the runs compared were trained or scored with different evaluator weights

    @property
    def verdict(self) -> str:
        d = -self.d if self.rel == "<" else self.d
        if math.isnan(d):
            return "missing"
        if self.mixed:
            return "not comparable: different evaluators"
        if math.isnan(self.se) or self.se == 0:  # one seed, pooled values or identical seeds: the sign decides
            tag = "" if self.se == 0 else " (no error bar)"
            if d == 0:
                return f"tie{tag}" if self.rel != ">=" else f"holds{tag}"
            return f"holds{tag}" if d > 0 else f"fails{tag}"
        if d > 2 * self.se:
            return "holds"
        if d < -2 * self.se:
            return "reversed"
        return "holds (within noise)" if self.rel == ">=" else "within noise"

    @property
    def ok(self) -> bool:
        return self.verdict.startswith("holds")

    def text(self, fmt: str = "{:+.3f}") -> str:
        se = "" if math.isnan(self.se) else f" ± {2 * self.se:.3f}"
        return f"{self.a} {self.rel} {self.b}: {fmt.format(self.d)}{se} ({self.verdict})"


def seed_values(inp: FigureInput, ds: str, label: str, metric: str) -> dict[int, float]:
    runs = inp.records.get((ds, label), {})
    vals = last_mean(curves(runs, metric, inp.rounds[ds]))
    seeds = finished_seeds(inp, ds, label)
    return dict(zip(seeds, vals.tolist()))


def link(inp: FigureInput, ds: str, a: tuple[str, str], b: tuple[str, str], rel: str) -> Link:
    """``a``/``b``: (series label, metric). Paired over common seeds when both are metrics
    of the same runs (same label), else Welch. Runs made with other evaluator weights (a
    loss classifier or scorer trained on another machine) are not compared: the link says so."""
    va, vb = seed_values(inp, ds, *a), seed_values(inp, ds, *b)
    name_a = a[0] if a[1] == b[1] else f"{a[0]} {a[1]}"
    name_b = b[0] if a[1] == b[1] else f"{b[0]} {b[1]}"
    if not va or not vb:
        return Link(name_a, name_b, rel, math.nan, math.nan, 0)
    mixed = len(evaluators_of(inp, ds, a[0]) | evaluators_of(inp, ds, b[0])) > 1
    if a[0] == b[0]:
        common = sorted(set(va) & set(vb))
        diff = np.array([va[s] - vb[s] for s in common])
        se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
        return Link(name_a, name_b, rel, float(diff.mean()), float(se), len(diff), mixed)
    xa, xb = np.array(list(va.values())), np.array(list(vb.values()))
    se = math.sqrt(xa.var(ddof=1) / len(xa) + xb.var(ddof=1) / len(xb)) if min(len(xa), len(xb)) > 1 else math.nan
    return Link(name_a, name_b, rel, float(xa.mean() - xb.mean()), se, min(len(xa), len(xb)), mixed)


def chain(inp: FigureInput, ds: str, labels: Sequence[str], metric: str, rel: str = ">") -> list[Link]:
    return [link(inp, ds, (a, metric), (b, metric), rel) for a, b in zip(labels, labels[1:])]


def overall(links: Sequence[Link]) -> str:
    if not links or all(lk.verdict == "missing" for lk in links):
        return "not run"
    if any(lk.mixed for lk in links):  # not a verdict on the method: the measurements differ
        return "not comparable (runs with different evaluators)"
    ok = sum(lk.ok for lk in links)  # a missing link counts as not holding
    return "holds" if ok == len(links) else "partly" if ok else "does not hold"


def _mean(inp: FigureInput, ds: str, label: str, metric: str) -> str:
    v = np.array(list(seed_values(inp, ds, label, metric).values()))
    if not v.size:
        return "-"
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else "") + f" (n={v.size})"


def judge(inputs: dict[str, FigureInput], method_label: str = "PSFL") -> list[dict[str, Any]]:
    """Rows (claim, dataset, numbers, links, verdict) for every claim whose figure was drawn.
    ``method_label``: the series that plays PSFL in Figs. 11-13 ("PSFL" or "psfl-plus (ours)")."""
    rows: list[dict[str, Any]] = []

    def add(claim: str, ds: str, numbers: str, links: list[Link]) -> None:
        rows.append({"claim": claim, "dataset": ds, "numbers": numbers,
                     "links": "; ".join(lk.text() for lk in links), "verdict": overall(links)})

    if method_label == "PSFL" and "fig5" in inputs:
        inp = inputs["fig5"]
        gaps = {}
        for ds in inp.datasets:
            lk = link(inp, ds, ("PSFL", "mentor_accuracy"), ("PSFL", "student_accuracy"), ">=")
            gaps[ds] = lk
            add("Figs. 4-5: the mentor is at least as accurate as the student", ds,
                f"mentor {_mean(inp, ds, 'PSFL', 'mentor_accuracy')}, student "
                f"{_mean(inp, ds, 'PSFL', 'student_accuracy')}", [lk])
        simple = [d for d in ("mnist", "fashion_mnist") if d in gaps]
        for hard in ("cifar10", "cifar100"):
            if hard in gaps and simple:
                more = [Link(f"gap {hard}", f"gap {s}", ">", gaps[hard].d - gaps[s].d,
                             math.hypot(gaps[hard].se, gaps[s].se), min(gaps[hard].n, gaps[s].n)) for s in simple]
                add("Figs. 4-5: ... more so on the complex dataset", hard,
                    ", ".join(f"gap {k} {g.d:+.3f}" for k, g in gaps.items()), more)
    orders = (("fig8", "Figs. 7-8: a smaller r is worse", ["r = 0.9", "r = 0.6", "r = 0.3"], ">"),
              ("fig10", "Figs. 9-10: PSFL w/o AGP >= PSFL >= PSFL w/o PLD", ["PSFL w/o AGP", "PSFL", "PSFL w/o PLD"],
               ">="))
    for fig, claim, labels, rel in orders:
        if method_label != "PSFL" or fig not in inputs:
            continue
        inp = inputs[fig]
        for metric in ("global_accuracy", "local_accuracy"):
            for ds in inp.datasets:
                add(f"{claim} ({metric})", ds, ", ".join(f"{lab}: {_mean(inp, ds, lab, metric)}" for lab in labels),
                    chain(inp, ds, labels, metric, rel))
    for fig in ("fig11", "fig12"):
        if fig not in inputs:
            continue
        inp = inputs[fig]
        for ds in inp.datasets:
            others = [s.label for s in inp.exp.series_for(ds) if s.label not in ("PSFL", "psfl-plus (ours)")]
            for metric in ("global_accuracy", "local_accuracy"):
                links = [link(inp, ds, (method_label, metric), (o, metric), ">") for o in others]
                add(f"Figs. 11-12: {method_label} has the best {metric.replace('_', ' ')}", ds,
                    ", ".join(f"{lab}: {_mean(inp, ds, lab, metric)}" for lab in [method_label] + others), links)
            if method_label == "PSFL":
                order = ["FedAvg", "FTTQ", "STC", "FedPAQ"]
                add("Figs. 11-12: FedAvg > FTTQ > STC > FedPAQ (global accuracy)", ds,
                    ", ".join(f"{lab}: {_mean(inp, ds, lab, 'global_accuracy')}" for lab in order),
                    chain(inp, ds, order, "global_accuracy"))
    if "fig13" in inputs:
        inp = inputs["fig13"]
        for ds in inp.datasets:
            others = [s.label for s in inp.exp.series_for(ds) if s.label not in ("PSFL", "psfl-plus (ours)")]
            med = {s.label: _energy(inp, ds, s.label) for s in inp.exp.series_for(ds)}
            me = med.get(method_label)
            if me is None:
                continue
            lows = [Link(method_label, o, "<", me[0] - med[o][0], math.nan, 1) for o in others if med.get(o)]
            flat = [Link(method_label, o, "<", me[1] - med[o][1], math.nan, 1) for o in others if med.get(o)]
            nums = ", ".join(f"{k}: median {v[0]:.4g} J, IQR {v[1]:.3g}" for k, v in med.items() if v)
            add(f"Fig. 13: {method_label} has the lowest per-round energy (median over rounds and seeds)", ds,
                nums, lows)
            add(f"Fig. 13: {method_label} has the flattest per-round energy (IQR)", ds, nums, flat)
    return rows


def _energy(inp: FigureInput, ds: str, label: str) -> tuple[float, float] | None:
    d = curves(inp.records.get((ds, label), {}), "energy", inp.rounds[ds]).ravel()
    if not d.size:
        return None
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    return float(med), float(q3 - q1)


def claims_markdown(inputs: dict[str, FigureInput]) -> str:
    lines = [f"Each number: mean ± sd over seeds of the last-{LAST}-round mean; a link reads "
             "difference ± 2 standard errors (see psfl.experiments.claims for the rule).", ""]
    for label, title in (("PSFL", "psfl (the paper's method)"), ("psfl-plus (ours)", "psfl-plus (ours)")):
        rows = judge(inputs, label)
        if not rows:
            continue
        lines += [f"### {title}", "", "| claim | dataset | numbers | comparisons | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {r['claim']} | {r['dataset']} | {r['numbers']} | {r['links']} | **{r['verdict']}** |"
                  for r in rows]
        lines.append("")
    return "\n".join(lines)
