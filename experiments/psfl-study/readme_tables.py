"""Copy the current study/headline/MSE tables into results/psfl-study/README.md, and write
the per-seed screen table (each run's last-5-round global accuracy, the evaluators it
used, and its difference from `base` of the same seed and evaluators)."""
import json
import re
from pathlib import Path

root = Path(__file__).resolve().parents[2] / "results" / "psfl-study"
ROWS = ["base", "base-ev2", "warmup5", "regrow-dense", "bn-recal", "floor20", "score-per-layer", "pld-half",
        "mentor-init", "no-agp"]
ROUNDS = 20


def run_info(run: Path):
    """(last-5 global accuracy, evaluator tag) of a finished run, else None."""
    m = run / "metrics.jsonl"
    if not m.is_file():
        return None
    recs = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
    if len(recs) < ROUNDS:
        return None
    ev = json.loads((run / "provenance.json").read_text())["evaluators"]
    tag = ev["loss_classifier"]["weights_blake2b"][:8] + "/" + ev["scorer"]["weights_blake2b"][:8]
    return sum(r["global"]["accuracy"] for r in recs[ROUNDS - 5:ROUNDS]) / 5, tag


def per_seed_table() -> str:
    info = {(n, s): run_info(root / "runs" / n / f"seed{s}") for n in ROWS for s in (0, 1, 2)}
    base = {}  # (seed, evaluators) -> base's accuracy
    for n in ("base", "base-ev2"):
        for s in (0, 1, 2):
            if info[(n, s)]:
                base[(s, info[(n, s)][1])] = info[(n, s)][0]
    lines = ["| name | seed 0 | seed 1 | seed 2 |", "|---|---|---|---|"]
    for n in ROWS:
        cells = []
        for s in (0, 1, 2):
            got = info[(n, s)]
            if not got:
                cells.append("-")
                continue
            acc, tag = got
            ref = base.get((s, tag))
            diff = f", {acc - ref:+.3f} vs base" if ref is not None and not n.startswith("base") else ""
            cells.append(f"{acc:.3f} (ev. {tag}{diff})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


readme = root / "README.md"
text = readme.read_text()
for tag, name in (("STUDY_TABLE", "study-table.md"), ("HEADLINE_TABLE", "headline-table.md"),
                  ("MSE_TABLE", "mse-table.md"), ("LONG20_TABLE", "long20-table.md"),
                  ("LONG40_TABLE", "long40-table.md")):
    if not (root / name).is_file():
        continue
    table = (root / name).read_text().strip()
    text = re.sub(rf"<!-- {tag} -->.*?<!-- /{tag} -->", f"<!-- {tag} -->\n\n{table}\n\n<!-- /{tag} -->", text,
                  flags=re.S)
text = re.sub(r"<!-- PER_SEED -->.*?<!-- /PER_SEED -->",
              "<!-- PER_SEED -->\n\nLast-5-round global accuracy per run; `ev.` = the loss classifier / scorer "
              "weights it used; the difference is to `base` of the same seed and evaluators (where one exists).\n\n"
              + per_seed_table() + "\n\n<!-- /PER_SEED -->", text, flags=re.S)
readme.write_text(text)
