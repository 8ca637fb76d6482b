"""Where the time of one cpu-scale federated round goes, op by op (torch.profiler).

Builds the ``psfl reproduce`` cpu-scale config (``experiments/reproduce/scale-cpu.toml``:
9 clients, 15 local SGD steps of 32, cpu presets) for a method and dataset, runs
``--warmup`` rounds through the in-process runner, then profiles the next ``--rounds``
rounds (``torch.profiler``, self CPU time of every op). Every op is charged to one
category: to the psfl stage it ran inside (evaluation, optimiser step and clipping, AGP
masking, channel, batch indexing, BatchNorm recalibration, upload/broadcast coding,
aggregation, checkpoint/bookkeeping), else by its kind (convolution, transposed
convolution, attention, linear/matmul, normalisation, element-wise, other). Also prints
the FLOPs of one training step of each trained model (``FlopCounterMode``: matmuls,
convolutions, attention) and the achieved GFLOP/s of local training against the CPU's
nominal fp32 peak: cores x 2 FMA pipes x SIMD lanes (16 with AVX-512, 8 with AVX2) x 2
FLOP x clock, with the clock read from ``/proc/cpuinfo`` unless ``--ghz`` or ``--peak``
is given (the output says which).

    python benchmarks/profile_round.py --method psfl --dataset fashion_mnist \\
        --data-dir ../shared/data [--threads 1] [--warmup 1] [--rounds 1] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]

# psfl stages, marked with record_function around the functions that run them
STAGES = {
    "evaluation": [("psfl.methods.base", "FederatedEnv", "local_accuracy"),
                   ("psfl.runners.inprocess", None, "evaluate_global")],
    "optimiser+clip": [("psfl.fl.local", None, "clipped_step")],
    "agp masking": [("psfl.fl.local", "HoldMask", "before_clip"), ("psfl.fl.local", "HoldMask", "after_step")],
    "bn recalibration": [("psfl.fl.local", None, "recalibrate_bn")],
    "upload/broadcast coding": [("psfl.methods.wire", None, n) for n in
                                ("encode_model", "decode_model", "encode_masked", "decode_masked",
                                 "encode_kept", "decode_kept")],
    "aggregation": [("psfl.fl.aggregate", None, "aggregate_states")],
    "checkpoint+bookkeeping": [("psfl.runners.store", None, "save_checkpoint")],
}
KINDS = (  # (category, op-name pattern), first match wins
    ("transposed convolution", r"conv_transpose|slow_conv_transpose|convolution_backward.*transpose"),
    ("convolution (+ transposed backward)", r"conv|mkldnn_convolution|convolution"),
    ("attention", r"scaled_dot_product|flash_attention|_efficient_attention|softmax"),
    ("linear/matmul", r"addmm|\bmm\b|aten::mm|bmm|matmul|linear|baddbmm"),
    ("normalisation", r"batch_norm|layer_norm|native_batch_norm|native_layer_norm"),
    ("optimiser+clip", r"_foreach|Optimizer"),
    ("batch indexing", r"index_select|randperm"),
    ("channel", r"normal_|randn"),
    ("element-wise", r"aten::(add|mul|sub|div|relu|gelu|threshold|copy_|clone|pow|sum|mean|where|cat|"
                     r"fill_|zero_|sqrt|exp|neg|clamp|masked|abs|empty|ones|zeros|to|_to_copy|reshape|view|"
                     r"permute|transpose|contiguous|as_strided|expand|unsqueeze|flatten|select|slice|t\b|"
                     r"gather|scatter|argsort|sort|topk|max|min|log|mse|nll|cross_entropy|_log_softmax)"),
)


def nominal_peak(threads: int, ghz: float | None, peak: float | None) -> tuple[float, str]:
    """Nominal fp32 GFLOP/s of ``threads`` cores and how it was obtained."""
    from psfl.utils.device import nominal_peak_gflops

    return (peak, "given (--peak)") if peak else nominal_peak_gflops(threads, ghz)


def cpu_model() -> str:
    from psfl.utils.device import device_info

    cpu = device_info("cpu")
    return f"{cpu['name']} ({cpu.get('cpu_id', '?')}, {cpu['capability']})"


def instrument() -> None:
    """Wrap the functions of :data:`STAGES` in ``record_function(stage)``."""
    import importlib

    def wrap(fn: Any, stage: str) -> Any:
        def inner(*a: Any, **kw: Any) -> Any:
            with record_function(f"psfl::{stage}"):
                return fn(*a, **kw)
        inner.__wrapped__ = fn  # type: ignore[attr-defined]
        return inner

    for stage, targets in STAGES.items():
        for mod_name, cls_name, fn_name in targets:
            mod = importlib.import_module(mod_name)
            owner = getattr(mod, cls_name) if cls_name else mod
            setattr(owner, fn_name, wrap(getattr(owner, fn_name), stage))
            if cls_name is None:  # modules that imported the function by name
                for other in list(__import__("sys").modules.values()):
                    if getattr(other, "__name__", "").startswith("psfl") and getattr(other, fn_name, None) is \
                            getattr(owner, fn_name).__wrapped__:
                        setattr(other, fn_name, getattr(owner, fn_name))
    # the channel (Eq. 6) is a module: mark its forward
    from psfl.channel import Channel

    for cls in [Channel, *Channel.__subclasses__(), *[c for s in Channel.__subclasses__() for c in s.__subclasses__()]]:
        if "forward" in cls.__dict__:
            cls.forward = wrap(cls.__dict__["forward"], "channel")
    # batch indexing: the local batch iterator
    import psfl.data.loader as L

    orig = L.iterate_batches

    def batches(*a: Any, **kw: Any) -> Any:
        it = orig(*a, **kw)
        while True:
            with record_function("psfl::batch indexing"):
                try:
                    b = next(it)
                except StopIteration:
                    return
            yield b
    L.iterate_batches = batches
    import psfl.data as D
    D.iterate_batches = batches


def category(ev: Any) -> str:
    """The psfl stage ``ev`` ran inside, else its kind by its own or an ancestor's op name
    (a transposed convolution's forward runs in ``aten::mkldnn_convolution`` under
    ``aten::conv_transpose2d``; its backward cannot be told from a convolution's)."""
    chain, node = [], ev
    while node is not None:
        if node.name.startswith("psfl::"):
            return node.name[6:]
        chain.append(node.name)
        node = node.cpu_parent
    if any("conv_transpose" in n for n in chain):
        return "transposed convolution"
    for cat, pat in KINDS:
        if re.search(pat, ev.name):
            return cat
    return "other"


def step_flops(method: Any, env: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """FLOPs of one training forward+backward (batch ``x``) of each model a client trains."""
    from torch.utils.flop_counter import FlopCounterMode

    models = {}
    if hasattr(method, "student"):
        models["student " + method.student_preset] = method.student
        for tier in sorted(set(method.tiers)):
            models[f"mentor {env.models.preset(tier)}"] = env.models.model(env.models.preset(tier))
    else:
        models["local " + method.preset] = method.net
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, m in models.items():
        m.train()
        counter = FlopCounterMode(display=False)
        with counter:
            o = m(x, 10.0, generator=g)
            terms, _ = env.evaluators.task_terms(o, x, y)
            terms["task"].backward()
        m.zero_grad(set_to_none=True)
        out[name] = counter.get_total_flops()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="psfl")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--evaluators", default=str(ROOT / "results" / "evaluators"),
                    help="evaluator cache (default: the kept results/evaluators)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    ap.add_argument("--ghz", type=float, default=None)
    ap.add_argument("--peak", type=float, default=None, help="nominal GFLOP/s of the cores used")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from psfl.experiments.reproduce import base_config, load_scale
    from psfl.methods import METHODS, build_env, options_for
    from psfl.runners.inprocess import run_federated

    extra = [f'method="{a.method}"', f"rounds={a.warmup + a.rounds}", f"threads={a.threads}",
             f'evaluator.cache_dir="{a.evaluators}"', *a.set]
    if a.data_dir:
        extra.append(f'data.data_dir="{Path(a.data_dir).resolve()}"')
    cfg = base_config(load_scale("cpu"), a.dataset, extra)
    env = build_env(cfg, progress=False)
    instrument()
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
    marks: dict[str, float] = {}

    def on_round(rec: dict[str, Any]) -> None:
        if rec["round"] == a.warmup - 1:
            marks["start"] = time.perf_counter()
            prof.start()
        if rec["round"] == a.warmup + a.rounds - 1:
            prof.stop()
            marks["stop"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        run_federated(cfg, Path(tmp) / "run", progress=False, env=env, on_round=on_round)
    wall = (marks["stop"] - marks["start"]) / a.rounds
    per: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str], float] = defaultdict(float)
    for ev in prof.events():
        if ev.name.startswith("psfl::"):
            continue
        c = category(ev)
        per[c] += ev.self_cpu_time_total / 1e6 / a.rounds
        ops[(c, ev.name)] += ev.self_cpu_time_total / 1e6 / a.rounds
    profiled = sum(per.values())

    method = METHODS.get(cfg.method)(env, options_for(cfg), cfg)
    method.init_server()
    c0 = env.data.clients[0]
    b = cfg.train.batch_size
    flops = step_flops(method, env, c0.x[:b], c0.y[:b])
    steps = cfg.train.local_steps * cfg.data.num_clients
    train_s = sum(v for k, v in per.items() if k not in
                  ("evaluation", "upload/broadcast coding", "aggregation", "checkpoint+bookkeeping",
                   "bn recalibration"))
    total_flop = sum(flops.values()) * steps  # every client trains one of each (PSFL: mentor of its tier)
    if hasattr(method, "tiers"):
        per_client = [flops["student " + method.student_preset] + flops[f"mentor {env.models.preset(t)}"]
                      for t in method.tiers]
        total_flop = sum(per_client) * cfg.train.local_steps
    peak, how = nominal_peak(a.threads, a.ghz, a.peak)
    achieved = total_flop / train_s / 1e9 if train_s else float("nan")

    print(f"# {a.method} on {a.dataset}: one cpu-scale round ({cfg.data.num_clients} clients x "
          f"{cfg.train.local_steps} steps of {b}), {a.threads} thread(s), torch {torch.__version__}")
    print(f"# CPU: {cpu_model()}; nominal peak {peak:.0f} GFLOP/s = {how}")
    print(f"# wall {wall:.2f} s per round; profiled self CPU {profiled:.2f} s; load {os.getloadavg()[0]:.2f}\n")
    print("| category | self CPU s / round | share |")
    print("|---|---:|---:|")
    for c, s in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"| {c} | {s:.3f} | {s / profiled:.1%} |")
    print(f"\nTop {a.top} ops (category, op, self CPU s / round):")
    for (c, n), s in sorted(ops.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"  {s:7.3f}  {c:24s} {n}")
    print("\nFLOPs of one training step (forward + backward, batch %d):" % b)
    for n, f in flops.items():
        print(f"  {n:22s} {f / 1e9:.3f} GFLOP")
    print(f"local training: {total_flop / 1e9:.1f} GFLOP in {train_s:.2f} s of its categories = "
          f"{achieved:.2f} GFLOP/s = {achieved / peak:.1%} of the nominal peak")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "method": a.method, "dataset": a.dataset, "threads": a.threads, "cpu": cpu_model(),
            "torch": torch.__version__, "peak_gflops": peak, "peak_how": how, "wall_s_per_round": wall,
            "self_cpu_s_per_round": dict(per), "step_gflop": {k: v / 1e9 for k, v in flops.items()},
            "train_gflops": achieved, "train_share_of_peak": achieved / peak,
            "top_ops": [{"category": c, "op": n, "s": s} for (c, n), s in
                        sorted(ops.items(), key=lambda kv: -kv[1])[: a.top]]}, indent=2))


if __name__ == "__main__":
    main()
