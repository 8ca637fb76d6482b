"""Plots and tables from a run's ``metrics.jsonl`` (paper Figs. 4-5 and 13 style)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def client_mean(record: dict[str, Any], key: str) -> float:
    vals = [c[key] for c in record["clients"] if key in c and c[key] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _line_plot(r: list[int], series: list[tuple[list[float], str, str]], ylabel: str, title: str,
               path: Path, ylim: tuple[float, float] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for ys, style, label in series:
        ax.plot(r, ys, style, label=label)
    ax.set(xlabel="communication round", ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_mentor_student(records: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Loss and accuracy vs round for mentor vs student (Figs. 4-5) + global student."""
    r = [rec["round"] + 1 for rec in records]
    loss = _line_plot(r, [
        ([client_mean(x, "mentor_total") for x in records], "o-", "mentor (GSC) $L'_{total}$"),
        ([client_mean(x, "student_total") for x in records], "s-", "student (CSC) $L_{total}$"),
        ([x["global"].get("loss", np.nan) for x in records], "^--", "global student, test loss"),
    ], "loss (mean over clients)", "Loss vs round", out_dir / "loss.png")
    acc = _line_plot(r, [
        ([client_mean(x, "mentor_acc") for x in records], "o-", "mentor (GSC), PSFL accuracy"),
        ([client_mean(x, "student_acc") for x in records], "s-", "student (CSC), local"),
        ([x["global"]["accuracy"] for x in records], "^--", "global student, global test"),
        ([x["global"].get("loss_clf_accuracy", np.nan) for x in records], "x:", "global student, loss classifier"),
    ], "accuracy", "Accuracy vs round", out_dir / "accuracy.png", ylim=(0, 1))
    return [loss, acc]


def plot_energy(records: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """Per-client communication energy per round (box) + the round's pruning ratio."""
    r = [rec["round"] + 1 for rec in records]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.boxplot([[c["energy_j"] for c in x["clients"]] for x in records], positions=r, widths=0.6)
    ax.set(xlabel="communication round", ylabel="energy per client upload (J)",
           title="Communication energy (Eqs. 12-14)")
    if any("zeta" in x for x in records):
        ax2 = ax.twinx()
        ax2.plot(r, [x.get("zeta", np.nan) for x in records], "r.--", label=r"$\zeta_t$ (Eq. 22)")
        ax2.set_ylabel(r"pruning ratio $\zeta_t$", color="r")
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    path = out_dir / "energy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_provenance(run_dir: Path | None) -> dict[str, Any]:
    import json

    path = Path(run_dir) / "provenance.json" if run_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def baseline_rows(baselines: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    names = {"constant": "constant image", "dataset_mean": "dataset-mean image",
             "class_mean": "class-mean image (oracle label)"}
    return [(f"  baseline: {names.get(k, k)}", f"{v['psnr']:.2f} dB / {v['ssim']:.4f}") for k, v in baselines.items()]


def accuracy_baseline_rows(baselines: dict[str, float]) -> list[tuple[str, str]]:
    """The accuracy of answers that ignore the image (``provenance["accuracy_baselines"]``)."""
    names = {"majority_class": "one class for every image (the most frequent)", "uniform": "guessing (1/C)"}
    return [(f"  baseline: {names.get(k, k)}", _num(v)) for k, v in baselines.items()]


def bandwidth_rows(models: dict[str, Any]) -> list[tuple[str, str]]:
    """One row per SC model of the run: k/n and real channel symbols per image."""
    from psfl.models import format_ratio

    return [(f"k/n of {name} (symbols per image)", f"{format_ratio(m['bandwidth_ratio'])} "
             f"({m['channel_symbols']:,} real, c = {m['channel_dim']})")
            for name, m in models.items() if isinstance(m, dict) and "bandwidth_ratio" in m]


def summary_rows(records: Sequence[dict[str, Any]], run_dir: Path | None = None) -> list[tuple[str, str]]:
    """The run summary; the first lines are the headline: the independent scorer's
    global accuracy and PSNR/SSIM next to the trivial baselines (from provenance.json)."""
    last = records[-1]
    g = last["global"]
    prov = read_provenance(run_dir)
    energy = [x["energy_j"] for x in records]
    bits = [x["upload_bits"] / max(1, len(x["clients"])) for x in records]
    scorer = prov.get("evaluators", {}).get("scorer", {})
    data = prov.get("data", {})
    headline = (f"global accuracy (independent scorer {scorer.get('arch', '')}, last round)" if prov
                else "global accuracy (no provenance.json: scored by the classifier in the loss)")
    rows = [
        (headline, _num(g["accuracy"])),
        ("  global accuracy, round 1", _num(records[0]["global"]["accuracy"])),
        *accuracy_baseline_rows(prov.get("accuracy_baselines", {})),
        ("global PSNR / SSIM (last round)", f"{_num(g.get('psnr'), '{:.2f}')} dB / {_num(g.get('ssim'))}"),
        *baseline_rows(prov.get("baselines", {})),
        ("  loss classifier's accuracy (it is in the loss)", _num(g.get("loss_clf_accuracy"))),
        ("method", str(last["method"])),
        ("rounds", str(len(records))),
        ("data", f"{data.get('source', '?')} (fingerprint {str(data.get('fingerprint', '?'))[:12]})"),
        *bandwidth_rows(prov.get("models", {})),
        ("PSFL accuracy (mean mentor acc, last round)", _num(client_mean(last, 'mentor_acc'))),
        ("  mentor acc, round 1", _num(client_mean(records[0], 'mentor_acc'))),
        ("mean student local acc (last round)", _num(client_mean(last, 'student_acc'))),
        ("mean local acc (last round)", _num(last.get("mean_local_acc"))),
        ("zeta trace", " ".join(f"{x.get('zeta', 0):.2f}" for x in records)),
        ("energy per round (J), mean", f"{np.mean(energy):.4f}"),
        ("energy total (J)", f"{np.sum(energy):.4f}"),
        ("upload bits per client per round, mean", f"{np.mean(bits):,.0f}"),
        ("wall time (s)", f"{sum(x['time_s'] for x in records):.1f}"),
    ]
    return rows


def plot_psnr(records: Sequence[dict[str, Any]], out_dir: Path, baselines: dict[str, dict[str, float]]) -> Path:
    """Global PSNR vs round beside the trivial baselines (horizontal lines)."""
    r = [rec["round"] + 1 for rec in records]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(r, [x["global"].get("psnr", np.nan) for x in records], "o-", label="global model")
    for (name, b), style in zip(baselines.items(), (":", "--", "-.")):
        ax.axhline(b["psnr"], color="gray", linestyle=style, label=f"baseline: {name.replace('_', '-')}")
    ax.set(xlabel="communication round", ylabel="PSNR (dB)", title="Reconstruction PSNR vs trivial baselines")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "psnr.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(rows: Sequence[tuple[str, str]]) -> str:
    w = max(len(a) for a, _ in rows)
    line = "-" * (w + 3 + max(len(b) for _, b in rows))
    return "\n".join([line] + [f"{a:<{w}} | {b}" for a, b in rows] + [line])


def write_report(records: Sequence[dict[str, Any]], out_dir: Path, plots: bool = True) -> list[Path]:
    """summary.txt and (``plots``) the run's PNGs in ``out_dir``; returns the PNGs' paths."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    if plots:
        paths = plot_mentor_student(records, out_dir)
        paths.append(plot_energy(records, out_dir))
        paths.append(plot_psnr(records, out_dir, read_provenance(out_dir).get("baselines", {})))
    (out_dir / "summary.txt").write_text(format_table(summary_rows(records, out_dir)) + "\n")
    return paths
