"""Flower engine overhead (issue 11, item 7): ratios measured in one run, alternating
engines (this machine is noisy; no absolute time is claimed).

1. **9 clients, cpu presets** (PSFL, GSC-M/L/H mentors + CSC student, the bundled
   Fashion-MNIST sample unless ``--data-dir``): round time of Flower's simulation engine /
   round time of the in-process engine, the same config and seed. Flower runs with
   ``client_resources.num_cpus`` = all cores, so one client trains at a time, as in
   process: the ratio is Flower's overhead, not parallelism (goal <= 1.25). A second
   Flower run with one CPU per client shows what running clients side by side gives.
2. **50 clients, tiny presets**: the same ratio where the per-client work is small and
   Flower's per-message cost shows most.
3. **Bytes**: per round, what Flower moves for psfl's messages against the method's
   payload bytes (broadcast to each participant + uploads). A Flower message is
   measured the way its gRPC transport ships it (``flwr`` 1.42): the message metadata
   as protobuf plus every content-addressed object of its content (``deflate()``); gRPC,
   HTTP/2 and TLS framing are not included.

Round times are each engine's own ``time_s`` in ``metrics.jsonl`` (broadcast, clients,
aggregation, evaluation, checkpoint). Round 0 also builds each Flower worker's
environment (data, evaluators) and is reported on its own; the ratio uses rounds >= 1.

    python benchmarks/flower_overhead.py [--data-dir ../shared/data] [--rounds 3] [--repeats 2] \
        [--out results/flower-bench/bench.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import write_report


def message_bytes(msg) -> int:
    """Bytes of one Flower message as the gRPC transport ships it: metadata protobuf +
    the deflated content objects (see the module docstring)."""
    from flwr.app.message.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    head = message_to_proto(remove_content_from_message(msg)).ByteSize()
    return head + sum(len(o.deflate()) for o in get_all_nested_objects(msg).values())


class CountingGrid:
    """Wraps a Flower grid: counts the bytes of every message sent and received per
    ``send_and_receive`` call (one call per round for ``train`` messages)."""

    def __init__(self, grid, log: list[dict]):
        self._grid, self._log = grid, log

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *a, **kw):
        messages = list(messages)
        sent = sum(message_bytes(m) for m in messages)
        replies = list(self._grid.send_and_receive(messages, *a, **kw))
        got = sum(message_bytes(r) for r in replies if not r.has_error())
        self._log.append({"type": messages[0].metadata.message_type if messages else "", "n": len(messages),
                          "sent_bytes": sent, "received_bytes": got})
        return replies


def overrides(family: str, clients: int, rounds: int, steps: int, cache: Path) -> list[str]:
    out = [f"rounds={rounds}", f'model.family="{family}"', f"data.num_clients={clients}", "threads=1",
           f"train.local_steps={steps}", f'evaluator.cache_dir="{cache}"']
    if clients != 9:
        out += ['data.sizes="none"', "data.min_client_size=8"]
    if family == "tiny":
        out += ["train.batch_size=8", "data.eval_samples=64", "data.local_eval_samples=8",
                "evaluator.epochs=1", "evaluator.score_epochs=1"]
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def one(engine: str, cfg, run_dir: Path, cpus: float, log: list[dict]) -> tuple[list[dict], float]:
    from psfl.runners import flower
    from psfl.runners.inprocess import run_federated

    t0 = time.perf_counter()
    if engine == "inprocess":
        run_federated(cfg, run_dir, progress=False)
    else:
        real = flower.flower_executor

        def counting(grid, *a, **kw):
            return real(CountingGrid(grid, log), *a, **kw)

        flower.flower_executor = counting
        try:
            flower.run_simulation(cfg, run_dir, num_cpus=cpus)
        finally:
            flower.flower_executor = real
    return records(run_dir), time.perf_counter() - t0


def compare(name: str, cfg, repeats: int, tmp: Path) -> dict:
    cores = os.cpu_count() or 1
    engines = [("inprocess", 0.0), ("flower", float(cores)), ("flower-parallel", 1.0)]
    times: dict[str, list[float]] = {e: [] for e, _ in engines}
    first: dict[str, list[float]] = {e: [] for e, _ in engines}
    walls: dict[str, list[float]] = {e: [] for e, _ in engines}
    traffic: list[dict] = []
    payload: list[int] = []
    for rep in range(repeats):
        for label, cpus in (engines if rep % 2 == 0 else engines[::-1]):  # alternate the order
            log: list[dict] = []
            recs, wall = one(label.split("-")[0], cfg, tmp / f"{name}-{label}-{rep}", cpus, log)
            first[label].append(recs[0]["time_s"])
            times[label] += [r["time_s"] for r in recs[1:]]
            walls[label].append(wall)
            if label == "flower" and rep == 0:
                trains = [e for e in log if e["type"] == "train"]
                traffic = trains
                payload = [r["downlink_bits"] // 8 * len(r["clients"]) + r["upload_bits"] // 8 for r in recs]
                assert len(trains) == len(recs), (len(trains), len(recs))
    med = {k: statistics.median(v) for k, v in times.items()}
    moved = [e["sent_bytes"] + e["received_bytes"] for e in traffic]
    return {
        "setting": name, "clients": cfg.data.num_clients, "family": cfg.model.family, "rounds": cfg.rounds,
        "local_steps": cfg.train.local_steps, "repeats": repeats, "cores": cores,
        "median_round_s": {k: round(v, 3) for k, v in med.items()},
        "round0_s": {k: [round(x, 2) for x in v] for k, v in first.items()},
        "run_wall_s": {k: [round(x, 1) for x in v] for k, v in walls.items()},
        "ratio_flower_over_inprocess": round(med["flower"] / med["inprocess"], 3),
        "ratio_flower_parallel_over_inprocess": round(med["flower-parallel"] / med["inprocess"], 3),
        "bytes_per_round": [{"round": i, "payload_bytes": p, "flower_bytes": m, "flower_over_payload": round(m / p, 4)}
                            for i, (p, m) in enumerate(zip(payload, moved))],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", help="folder with fashion_mnist.npz (default: the bundled sample)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="local steps per round, cpu setting")
    ap.add_argument("--repeats", type=int, default=2, help="runs per engine, alternating the order")
    ap.add_argument("--tiny-clients", type=int, default=50)
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from psfl.config import load_config
    from psfl.methods import check_run_config

    data = [f'data.data_dir="{Path(args.data_dir).resolve()}"'] if args.data_dir else []
    report = {"machine": {"cores": os.cpu_count(), "cpu": _cpu_model()}, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = [("cpu-9", "cpu", 9, args.steps)] + ([] if args.skip_tiny else [("tiny-50", "tiny", args.tiny_clients, 2)])
        for name, family, k, steps in settings:
            cfg = check_run_config(load_config(None, overrides(family, k, args.rounds, steps, tmp / "cache") + data))
            res = compare(name, cfg, args.repeats, tmp)
            report["results"].append(res)
            print(json.dumps(res, indent=2), flush=True)
    write_report(report, args.out, echo=False)
    for r in report["results"]:
        b = r["bytes_per_round"]
        print(f"{r['setting']}: Flower/in-process round time {r['ratio_flower_over_inprocess']:.3f} "
              f"(clients side by side: {r['ratio_flower_parallel_over_inprocess']:.3f}); "
              f"Flower bytes / payload bytes {min(x['flower_over_payload'] for x in b):.4f}-"
              f"{max(x['flower_over_payload'] for x in b):.4f}")
    return 0


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
