"""Where tensors live, and random draws that do not depend on it.

    dev = resolve_device("auto")              # cuda:0 when a GPU is visible, else cpu
    model.to(dev); evaluator.to(dev)
    for xb, yb in iterate_batches(x, y, 64, g):
        xb, yb = to_device(xb, dev), to_device(yb, dev)

Generators stay on the CPU: :func:`randn` / :func:`rand` draw on the generator's device
and then move the result, so one seed gives the same channel noise, masks and shuffles
on every device. What draws from torch's *global* state (parameter initialisation,
dropout) is seeded inside :func:`seeded` for the CPU and the target device; dropout
masks then are deterministic per device, not across devices.

The CLI default is ``cpu`` (not ``auto``) so that a command gives the same numbers on a
machine whether or not it has a GPU; ``--device auto`` or ``cuda[:i]`` opt in.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import re
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from psfl.utils.errors import PsflError

CPU = torch.device("cpu")
DEFAULT_DEVICE = "cpu"  # CLI default: reproducible numbers on any machine
_SPEC = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


def _no_cuda_reason() -> str:
    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} is built without CUDA"
    return f"torch {torch.__version__} is built with CUDA {torch.version.cuda} but no GPU is visible"


def resolve_device(spec: str | torch.device) -> torch.device:
    """``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"`` or ``"cuda:i"`` ->
    a ``torch.device`` with an explicit CUDA index. Raises :class:`PsflError` for a
    malformed name, for CUDA without a visible GPU and for an index out of range."""
    text = str(spec).strip()
    m = _SPEC.match(text)
    if m is None:
        raise PsflError(f"unknown device {text!r}: expected auto, cpu, cuda or cuda:N")
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return CPU
    if not torch.cuda.is_available():
        raise PsflError(f"device {text} requested but CUDA is not available ({_no_cuda_reason()})")
    count = torch.cuda.device_count()
    index = int(m.group(2)) if m.group(2) is not None else torch.cuda.current_device()
    if index >= count:
        raise PsflError(f"device {text} requested but only {count} CUDA device(s) are visible "
                        f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def _cpu_fields() -> dict[str, str]:
    """The CPU's model name and, since a virtual machine's name can be as bare as "AMD
    EPYC", its family / model numbers (which tell its generation, and so its speed and its
    float rounding) and the SIMD kernels torch picked (``ATEN_CPU_CAPABILITY`` changes them)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip():
                    break  # the first processor's block is enough
    except OSError:
        pass
    out = {"name": fields.get("model name") or platform.processor() or platform.machine()}
    if "cpu family" in fields:
        out["cpu_id"] = f"family {fields['cpu family']} model {fields.get('model', '?')}"
    out["capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def nominal_peak_gflops(cores: int, ghz: float | None = None) -> tuple[float, str]:
    """The nominal fp32 peak of ``cores`` CPU cores in GFLOP/s, and how it was computed:
    cores x 2 FMA pipes x SIMD lanes (16 with AVX-512, 8 with AVX2, else 4) x 2 FLOP per
    FMA x clock. The clock is ``ghz``, else the highest ``cpu MHz`` of ``/proc/cpuinfo``
    (a virtual machine reports its nominal clock there; turbo is not counted)."""
    flags: list[str] = []
    mhz: list[float] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags" and not flags:
                    flags = value.split()
                elif key.strip() == "cpu MHz":
                    mhz.append(float(value))
    except (OSError, ValueError):
        pass
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2") if "avx2" in flags else (4, "SSE")
    clock = ghz or (max(mhz) / 1000 if mhz else 0.0)
    src = "given" if ghz else "/proc/cpuinfo"
    return (cores * 2 * lanes * 2 * clock,
            f"{cores} cores x 2 FMA x {lanes} {isa} lanes x 2 FLOP x {clock:.2f} GHz ({src})")


def device_info(device: torch.device | str) -> dict[str, Any]:
    """Provenance of ``device`` for run records: ``device``, ``type``, ``name`` (GPU or
    CPU model), ``torch``, ``cuda`` (toolkit torch was built with, None if none),
    ``threads`` (torch CPU threads); on a CPU ``cpu_id`` and ``capability`` (the SIMD
    kernels in use), on a GPU ``capability``, ``memory_gib``, ``cudnn``."""
    dev = resolve_device(device)
    info: dict[str, Any] = {"device": str(dev), "type": dev.type, "torch": str(torch.__version__),
                            "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(name=torch.cuda.get_device_name(dev), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
    else:
        info.update(_cpu_fields())
    return info


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (cpu for a module with none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return CPU


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` (no copy if already there; asynchronous from pinned memory)."""
    return t.to(device, non_blocking=True)


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else CPU


def randn(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype | None = None,
          device: torch.device | None = None) -> Tensor:
    """N(0, 1) of ``shape`` drawn on the generator's device (the CPU global RNG when
    ``generator`` is None) and then moved to ``device``: the values depend on the seed
    only, not on ``device``."""
    out = torch.randn(shape, generator=generator, dtype=dtype, device=_draw_device(generator))
    return out if device is None else out.to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype | None = None,
         device: torch.device | None = None) -> Tensor:
    """U[0, 1) of ``shape``, drawn like :func:`randn` (seed-determined, device-independent)."""
    out = torch.rand(shape, generator=generator, dtype=dtype, device=_draw_device(generator))
    return out if device is None else out.to(device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = CPU) -> Iterator[None]:
    """Seed torch's global RNG of the CPU and of ``device`` (when CUDA) for the block and
    restore both afterwards: for what cannot take a generator (``nn.init``, dropout)."""
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def nhwc_trains_safely(model: nn.Module) -> bool:
    """False when ``model`` holds a convolution that oneDNN cannot train in NHWC on
    every CPU: a 1x1 convolution with stride > 1 and fewer than 16 input channels.
    Its NHWC backward-weights kernel (oneDNN's ``jit_1x1``, torch 2.14.1) writes past its
    workspace when the input channels do not fill one register block (8 on AVX2, 16 on
    AVX-512; oneDNN issue uxlfoundation/oneDNN#6035): glibc aborts ("corrupted
    double-linked list"), the run segfaults or deadlocks some steps later, or the
    gradients are silently wrong. Measured here on an AMD EPYC Zen 3 (AVX2): 2-7 input
    channels crash, 8 and up match NCHW. The bound is the AVX-512 block, so that one rule
    holds on every CPU. Such models (the ``tiny`` and ``cpu`` CSC presets, ``SCModel.memory_format``) and
    classifiers (``fit_classifier``) train NCHW."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 16:
            return False
    return True
