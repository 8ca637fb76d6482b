"""Devices: `resolve_device` and its one-line errors (library and CLI), provenance records,
random draws made on the CPU generator whatever the target device, and - on a machine with
a GPU - the channel, a train step and the metrics on CUDA against the CPU."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import psfl
from psfl.channel import CHANNELS, create_channel
from psfl.cli import main
from psfl.utils.device import device_info, module_device, rand, randn, resolve_device, seeded
from psfl.utils.errors import PsflError
from psfl.models.gsc import random_masking

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend two GPUs are visible (resolve_device only builds torch.device objects)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# ----------------------------------------------------------------------------- resolve_device
def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    want = torch.device("cuda", torch.cuda.current_device()) if HAS_CUDA else torch.device("cpu")
    assert resolve_device("auto") == want


def test_auto_is_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_gpu_is_a_one_line_error(no_cuda, spec):
    with pytest.raises(PsflError, match=f"^device {spec} requested but CUDA is not available \\(torch ") as e:
        resolve_device(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["nonsense", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "mps", "", "CUDA"])
def test_malformed_device_names(spec):
    with pytest.raises(PsflError, match="^unknown device .*: expected auto, cpu, cuda or cuda:N$"):
        resolve_device(spec)


def test_cuda_index_resolution(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)  # explicit index, comparable with p.device
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(PsflError, match=r"^device cuda:2 requested but only 2 CUDA device\(s\) are visible "
                                        r"\(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")


def test_device_info_is_a_plain_record(tmp_path):
    info = device_info("cpu")
    assert info["device"] == "cpu" and info["type"] == "cpu" and info["name"]
    assert info["torch"] == torch.__version__ and type(info["torch"]) is str
    json.dumps(info)
    torch.save({"config": {"device": info}}, tmp_path / "c.pt")  # checkpoints embed it:
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"]["device"] == info  # weights-only safe


def test_device_info_names_the_cpu_kernels_in_use():
    """``capability`` is what torch runs, not what the CPU could: forcing the portable
    kernels (as a slower CPU would get) shows in the record."""
    code = "import json; from psfl.utils.device import device_info; print(json.dumps(device_info('cpu')))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert out["capability"] == "DEFAULT"
    assert device_info("cpu")["capability"] == torch.backends.cpu.get_cpu_capability()


def test_module_device():
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: cpu


def test_seeded_restores_global_state_and_matches_manual_seed():
    before = torch.random.get_rng_state()
    with seeded(123):
        a = torch.rand(5)
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        assert torch.equal(a, torch.rand(5))


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv", [
    ["train", "--out", "{tmp}/run"],
    ["evaluator", "train", "--dataset", "fashion_mnist", "--cache-dir", "{tmp}/cache"],
    ["transmit", "--checkpoint", "{tmp}/model.pt"],
    ["pretrain", "--out", "{tmp}/mae.pt"],
])
@pytest.mark.parametrize("device,message", [
    ("cuda", "device cuda requested but CUDA is not available"),
    ("nonsense", "unknown device 'nonsense'"),
])
def test_cli_bad_device_exits_2_with_one_line(no_cuda, tmp_path, capsys, argv, device, message):
    args = [a.format(tmp=tmp_path) for a in argv] + ["--device", device]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"psfl {argv[0]}: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # failed before any work


@pytest.mark.skipif(HAS_CUDA, reason="checks the error when no GPU is present")
def test_psfl_train_device_cuda_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(psfl.__file__).parents[1])}
    p = subprocess.run([sys.executable, "-m", "psfl", "train", "--device", "cuda", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("psfl train: error: device cuda requested but CUDA is not available")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_cli_device_default_is_cpu():
    from psfl.cli import build_parser

    parser = build_parser()
    for argv in (["train", "--out", "x"], ["evaluator", "train", "--dataset", "d"], ["transmit", "--checkpoint", "c"],
                 ["pretrain", "--out", "x"]):
        assert parser.parse_args(argv).device == "cpu"


# ----------------------------------------------------------------------------- random draws
def test_draws_depend_on_the_seed_only():
    g = torch.Generator().manual_seed(7)
    a = randn((3, 4), g, torch.float64, torch.device("cpu"))
    b = rand((5,), g)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(a, torch.randn(3, 4, generator=g, dtype=torch.float64))
    assert torch.equal(b, torch.rand(5, generator=g))


@pytest.mark.parametrize("name", CHANNELS.names())
def test_channel_noise_is_the_cpu_generators_draw(name):
    """Oracle: the noise (and fading gain) are the CPU generator's first draws, scaled."""
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0))
    ch = create_channel(name)
    X, Y = ch(x, 10.0, torch.Generator().manual_seed(3))
    assert X.device == Y.device == x.device
    g = torch.Generator().manual_seed(3)
    if name == "awgn":
        want = torch.randn(6, 5, 8, generator=g) * 10 ** -0.5
        torch.testing.assert_close(Y - X, want, rtol=1e-5, atol=1e-6)
        return
    out = ch.transmit(x, 10.0, torch.Generator().manual_seed(3))
    h = torch.view_as_complex(torch.randn(6, 2, generator=g)) * (0.5 ** 0.5)  # CN(0, 1)
    if name == "rician":
        K = ch.k_factor
        h = h * (1 / (K + 1)) ** 0.5 + (K / (K + 1)) ** 0.5
    torch.testing.assert_close(out.h, h)
    N = torch.view_as_complex(torch.randn(6, 5, 4, 2, generator=g)) * (0.2 / 2) ** 0.5  # noise_var 2/psi
    torch.testing.assert_close(out.noise, N)


def test_every_draw_happens_on_the_generators_device(monkeypatch):
    """Symbols on another device (meta here; cuda on a GPU machine) never make torch draw
    there with a CPU generator: every randn/rand call runs on the generator's device."""
    calls: list[tuple[torch.device, torch.device]] = []
    for fn in ("randn", "rand"):
        real = getattr(torch, fn)

        def spy(*a, _real=real, **k):
            g = k.get("generator")
            if g is not None:
                calls.append((torch.device(k.get("device") or "cpu"), g.device))
            return _real(*a, **k)

        monkeypatch.setattr(torch, fn, spy)
    x = torch.empty(4, 6, 8, device="meta")
    for name in CHANNELS.names():
        X, Y = create_channel(name)(x, 10.0, torch.Generator().manual_seed(0))
        assert Y.device.type == "meta"
    ids_keep, ids_restore, mask = random_masking(16, 4, 0.75, torch.Generator().manual_seed(0), x.device)
    assert mask.device.type == "meta" and ids_keep.shape == (4, 4)
    assert calls and all(draw == gen for draw, gen in calls)


# ----------------------------------------------------------------------------- on a GPU
@pytest.fixture
def cuda():
    """cuda:0 with TF32 off, so CUDA and CPU agree to float32 rounding."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield resolve_device("cuda:0")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _tiny(preset: str, seed: int = 0) -> torch.nn.Module:
    from psfl.models import create_model

    with seeded(seed):
        return create_model(preset, img_size=28, in_chans=1)


def _evaluator(seed: int = 0) -> torch.nn.Module:
    from psfl.evaluate import create_classifier, freeze

    with seeded(seed):
        return freeze(create_classifier("cnn", 1, 10, 28))


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@cuda_only
@pytest.mark.parametrize("name", CHANNELS.names())
def test_cuda_channel_matches_cpu(cuda, name):
    x = torch.randn(8, 10, 6, generator=torch.Generator().manual_seed(0))
    snr = torch.linspace(0, 20, 8)  # per-sample SNR, a CPU tensor
    Xc, Yc = create_channel(name)(x, snr, torch.Generator().manual_seed(5))
    Xg, Yg = create_channel(name)(x.to(cuda), snr, torch.Generator().manual_seed(5))
    assert Yg.device == cuda
    torch.testing.assert_close(Xg.cpu(), Xc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Yg.cpu(), Yc, rtol=1e-5, atol=1e-5)


@cuda_only
def test_cuda_masking_and_init_match_cpu(cuda):
    a = random_masking(49, 8, 0.75, torch.Generator().manual_seed(2), torch.device("cpu"))
    b = random_masking(49, 8, 0.75, torch.Generator().manual_seed(2), cuda)
    assert all(torch.equal(u, v.cpu()) for u, v in zip(a, b))
    from psfl.models import create_model

    with seeded(4):
        m_cpu = create_model("tiny-M", img_size=28, in_chans=1)
    with seeded(4):
        m_gpu = create_model("tiny-M", img_size=28, in_chans=1, device=cuda)
    assert module_device(m_gpu) == cuda
    assert all(torch.equal(p, q.cpu()) for p, q in zip(m_cpu.state_dict().values(), m_gpu.state_dict().values()))


@cuda_only
@pytest.mark.parametrize("preset", ["tiny-M", "tiny-CSC"])
def test_cuda_train_step_matches_cpu(cuda, preset):
    from psfl.central.train import sample_snr, train_step

    model = _tiny(preset)
    ev = _evaluator()
    x, y = _batch()

    def step(dev: torch.device) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        m, e = copy.deepcopy(model).to(dev), copy.deepcopy(ev).to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(9)  # per-sample SNRs and channel noise
        terms = train_step(m, e, x.to(dev), y.to(dev), sample_snr((0.0, 20.0), x.shape[0], g), opt, g)
        return terms, {k: v.cpu() for k, v in m.state_dict().items()}

    (t_cpu, s_cpu), (t_gpu, s_gpu) = step(torch.device("cpu")), step(cuda)
    for k in t_cpu:
        assert t_gpu[k] == pytest.approx(t_cpu[k], rel=1e-4, abs=1e-5), k
    for k in s_cpu:
        torch.testing.assert_close(s_gpu[k], s_cpu[k], rtol=1e-4, atol=1e-5, msg=k)


@cuda_only
def test_cuda_evaluate_reconstruction_matches_cpu(cuda):
    from psfl.evaluate import classifier_accuracy, evaluate_reconstruction

    model, ev = _tiny("tiny-CSC"), _evaluator()
    x, y = _batch(64)  # stay on the CPU: evaluate_reconstruction moves each batch
    cpu = evaluate_reconstruction(model, ev, x, y, 5.0, generator=torch.Generator().manual_seed(3), batch_size=24)
    gpu = evaluate_reconstruction(copy.deepcopy(model).to(cuda), copy.deepcopy(ev).to(cuda), x, y, 5.0,
                                  generator=torch.Generator().manual_seed(3), batch_size=24)
    assert abs(gpu["accuracy"] - cpu["accuracy"]) <= 1 / 64  # at most one near-tie argmax flips
    for k in ("psnr", "ssim", "mse", "ce", "loss"):
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-4, abs=1e-5), k
    assert classifier_accuracy(copy.deepcopy(ev).to(cuda), x, y) == pytest.approx(classifier_accuracy(ev, x, y),
                                                                                  abs=1 / 64)


@cuda_only
def test_cuda_fit_transmit_and_checkpoints_load_on_cpu(cuda, tmp_path):
    from psfl.evaluate import create_classifier, fit_classifier, freeze
    from psfl.evaluate.transmit import transmit_images
    from psfl.fl.agp import update_mask
    from psfl.models import load_model_checkpoint, save_model_checkpoint

    x, y = _batch(64)
    with seeded(0):
        net = create_classifier("cnn", 1, 10, 28).to(cuda)
    hist = fit_classifier(net, x, y, 1, 16, 1e-3, torch.Generator().manual_seed(0), hflip=True, progress=False)
    assert module_device(net) == cuda and math.isfinite(hist[0]["loss"])
    model = _tiny("tiny-M").to(cuda)
    r = transmit_images(model, freeze(net), x[:3], 10.0, generator=torch.Generator().manual_seed(0))
    assert r.original.device.type == r.reconstruction.device.type == "cpu" and len(r.psnr) == 3
    path = save_model_checkpoint(model, tmp_path / "m.pt")
    back = load_model_checkpoint(path)  # no GPU needed to read it
    assert module_device(back) == torch.device("cpu")
    assert all(torch.equal(p.cpu(), q) for p, q in zip(model.state_dict().values(), back.state_dict().values()))
    state = {k: v for k, v in model.state_dict().items() if v.ndim >= 2}
    keys = sorted(state)
    m_cpu = update_mask({k: v.cpu() for k, v in state.items()}, None, 0.5, keys, torch.Generator().manual_seed(1))
    m_gpu = update_mask(state, None, 0.5, keys, torch.Generator().manual_seed(1))
    assert all(torch.equal(m_cpu[k], m_gpu[k].cpu()) for k in keys)


@cuda_only
def test_cuda_run_central_end_to_end(cuda, tmp_path, monkeypatch):
    from psfl import data as D
    from psfl.models import load_model_checkpoint
    from psfl.central.train import CentralConfig, run_central
    from test_train import synthetic_dataset

    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: synthetic_dataset(96, 40))
    cfg = CentralConfig(model="tiny-CSC", epochs=1, batch_size=16, evaluator_epochs=1, test_snr_db=(0.0, 20.0),
                        evaluator_cache_dir=str(tmp_path / "cache"), device="cuda")
    r = run_central(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["device"]["type"] == "cuda" and saved["device"]["name"] == torch.cuda.get_device_name(cuda)
    assert module_device(load_model_checkpoint(r.checkpoint)) == torch.device("cpu")


def test_nominal_peak_counts_cores_lanes_and_clock():
    """The benchmarks' peak: cores x 2 FMA x SIMD lanes x 2 FLOP x clock, lanes from the
    CPU's flags (16 with AVX-512, 8 with AVX2)."""
    from pathlib import Path

    from psfl.utils.device import nominal_peak_gflops

    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    one, how = nominal_peak_gflops(1, ghz=2.5)
    assert one == pytest.approx(2 * lanes * 2 * 2.5) and f"{lanes} " in how and "given" in how
    assert nominal_peak_gflops(2, ghz=2.5)[0] == pytest.approx(2 * one)
