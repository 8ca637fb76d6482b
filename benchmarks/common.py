"""What the benchmark scripts share: alternating timing, the CPU they ran on and where
their JSON report goes."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable


def alternate(fns: dict[str, Callable[[], None]], repeats: int, inner: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns (``repeats``
    rounds of ``inner`` calls each, after one warm-up call), so that a machine that gets
    busier or quieter during the run shifts every variant alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for n, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[n].append((time.perf_counter() - t) / inner)
    return {n: statistics.median(v) for n, v in times.items()}


def cpu_line(threads: int) -> str:
    """``CPU name (family / model), SIMD kernels; torch version; N thread(s)``."""
    import torch

    from psfl.utils.device import device_info

    cpu = device_info("cpu")
    return (f"{cpu['name']} ({cpu.get('cpu_id', '?')}), {cpu['capability']} kernels; torch {torch.__version__}; "
            f"{threads} thread(s)")


def write_report(report: object, out: str | None, echo: bool = True) -> None:
    """The report as indented JSON, on stdout (``echo``) and in ``out`` (if given)."""
    text = json.dumps(report, indent=2)
    if echo:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
