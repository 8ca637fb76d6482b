"""`psfl compare`: several methods on the same partition, seed, evaluator and SNR trace
(Figs. 9-13): global loss and accuracy vs round, per-client final local accuracy,
per-round energy boxplots, and a CSV + markdown table."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from psfl.config import RunConfig  # noqa: E402
from psfl.utils.errors import PsflError  # noqa: E402


def summarize(method: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    last = records[-1]
    energy = [r["energy_j"] for r in records]
    return {
        "method": method,
        "rounds": len(records),
        "global_accuracy": last["global"]["accuracy"],
        "global_loss": last["global"].get("loss", float("nan")),
        "global_psnr": last["global"].get("psnr", float("nan")),
        "global_ssim": last["global"].get("ssim", float("nan")),
        "loss_clf_accuracy": last["global"].get("loss_clf_accuracy", float("nan")),
        "mean_local_accuracy": last["mean_local_acc"],
        "energy_total_j": float(np.sum(energy)),
        "energy_per_round_j": float(np.mean(energy)),
        "upload_bits_per_round": float(np.mean([r["upload_bits"] for r in records])),
        "upload_bits_per_client": float(np.mean([c["upload_bits"] for r in records for c in r["clients"]])),
        "downlink_bits_per_round": float(np.mean([r["downlink_bits"] for r in records])),
    }


def bandwidth_of(run_dir: Path) -> str:
    """k/n of every model of a run (its provenance), e.g. ``cpu-CSC 0.653, cpu-M 2.00``."""
    from psfl.experiments.report import read_provenance
    from psfl.models import format_ratio

    models = read_provenance(run_dir).get("models", {})
    return ", ".join(f"{k} {format_ratio(v['bandwidth_ratio'])}" for k, v in models.items() if isinstance(v, dict))


def plot_compare(results: dict[str, list[dict[str, Any]]], out: Path, num_clients: int,
                 baselines: dict[str, dict[str, float]] | None = None) -> list[Path]:
    paths = []
    for key, ylabel, name in (("loss", "global loss (CE + weighted MSE)", "global_loss.png"),
                              ("accuracy", "global accuracy (independent scorer)", "global_accuracy.png"),
                              ("psnr", "global PSNR (dB)", "global_psnr.png")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m, recs in results.items():
            ax.plot([r["round"] + 1 for r in recs], [r["global"].get(key, np.nan) for r in recs], marker=".",
                    label=m)
        if key == "psnr":  # trivial reconstructions of the same test images
            for (b, v), style in zip((baselines or {}).items(), (":", "--", "-.")):
                ax.axhline(v["psnr"], color="gray", linestyle=style, label=f"baseline: {b.replace('_', '-')}")
        ax.set(xlabel="communication round", ylabel=ylabel)
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(results)
    for i, (m, recs) in enumerate(results.items()):
        acc = np.full(num_clients, np.nan)
        for rec in recs:  # a client's latest local accuracy (partial participation)
            for c in rec["clients"]:
                acc[c["cid"]] = c["local_acc"]
        ax.bar(np.arange(num_clients) + i * width - 0.4 + width / 2, acc, width, label=m)
    ax.set(xlabel="client", ylabel="final local accuracy", xticks=range(num_clients), ylim=(0, 1))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(out / "local_accuracy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.boxplot([[r["energy_j"] for r in recs] for recs in results.values()],
               tick_labels=list(results))
    ax.set(ylabel="communication energy per round (J)", yscale="log")
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths.append(out / "energy_boxplot.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_tables(rows: list[dict[str, Any]], out: Path, baselines: dict[str, dict[str, float]] | None = None,
                 accuracy_baselines: dict[str, float] | None = None) -> tuple[Path, Path]:
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = [("method", "method", "{}"), ("global_accuracy", "global acc (scorer)", "{:.4f}"),
            ("global_psnr", "PSNR (dB)", "{:.2f}"), ("global_ssim", "SSIM", "{:.4f}"),
            ("loss_clf_accuracy", "acc (loss clf)", "{:.4f}"),
            ("mean_local_accuracy", "mean local acc", "{:.4f}"), ("global_loss", "global loss", "{:.4f}"),
            ("energy_total_j", "energy total (J)", "{:.3f}"), ("energy_per_round_j", "energy/round (J)", "{:.4f}"),
            ("upload_bits_per_client", "upload bits/client/round", "{:,.0f}"),
            ("downlink_bits_per_round", "downlink bits/round", "{:,.0f}"),
            ("bandwidth_ratio", "k/n of its models", "{}")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r.get(k, "")) for k, _, fmt in cols) + " |")
    if baselines:
        lines += ["", "Trivial reconstructions of the same test images (PSNR / SSIM): " + "; ".join(
            f"{k.replace('_', '-')} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for k, v in baselines.items())]
    if accuracy_baselines:
        lines += ["", "Accuracy without reading the images (same test images): one class for every image "
                  f"(the most frequent) {accuracy_baselines['majority_class']:.4f}; guessing "
                  f"{accuracy_baselines['uniform']:.4f}"]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def compare(cfg: RunConfig, methods: Sequence[str], out: Path, progress: bool = True,
            resume: bool = False, device: Any = "cpu", overwrite: bool = False, engine: str = "inprocess",
            client_cpus: float = 1.0, client_gpus: float = 0.0) -> tuple[list[dict[str, Any]], list[Path]]:
    """Run every method (same data partition, evaluator, seed and SNR trace) into
    ``out/<method>/`` and write the comparison plots and tables into ``out``. ``engine``:
    ``inprocess`` (one process) or ``flower`` (Flower's simulation engine, each method
    a simulation with ``client_cpus`` / ``client_gpus`` per virtual SuperNode)."""
    from psfl.methods import METHODS, build_env, check_run_config
    from psfl.runners.inprocess import run_federated

    if engine not in ("inprocess", "flower"):
        raise PsflError(f"unknown engine {engine!r}: inprocess or flower")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PsflError(f"unknown method(s) {unknown}; known: {', '.join(METHODS.names())}")
    check_run_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    env = build_env(cfg, progress=progress, device=device)
    results: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        mcfg = replace(cfg, method=m)  # same environment (data, evaluators, models), another method
        if engine == "flower":  # the server builds its environment from the same config
            from psfl.runners.flower import run_simulation
            from psfl.runners.inprocess import clear_run

            if overwrite and (out / m).is_dir():
                clear_run(out / m)
            results[m] = run_simulation(mcfg, out / m, resume=resume, device=str(device), num_cpus=client_cpus,
                                        num_gpus=client_gpus, strict=m == cfg.method).records
        else:
            results[m] = run_federated(mcfg, out / m, resume=resume, progress=progress, env=env,
                                       strict=m == cfg.method, overwrite=overwrite).records
    rows = [{**summarize(m, recs), "bandwidth_ratio": bandwidth_of(out / m)} for m, recs in results.items()]
    baselines = env.provenance.get("baselines")
    paths = (list(write_tables(rows, out, baselines, env.provenance.get("accuracy_baselines")))
             + plot_compare(results, out, cfg.data.num_clients, baselines))
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows, paths
