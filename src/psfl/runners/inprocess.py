"""In-process federated simulator (the default engine).

K clients run one after another in one process; one model object per architecture is
reused and each client's state is a dict of tensors. After every round the run
directory gets a checkpoint (atomic write) and one JSON line of metrics, so a run killed
at any point resumes from the last complete round and ends with identical metrics.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from psfl.config import RunConfig, diff_configs, dump_config, load_config
from psfl.utils.errors import PsflError, RoundFailedError
from psfl.utils.fileio import atomic_path, remove_stale_temporaries, write_text_atomic
from psfl.fl.energy import link_cost, round_snrs
from psfl.fl.privacy import dp_epsilon
from psfl.methods import METHODS, FederatedEnv, FederatedMethod, Upload, build_env, check_run_config, options_for
from psfl.methods.base import ClientResult
from psfl.methods.base import check_finite, check_state_finite, make_generator, run_dataset
from psfl.methods.screen import screen_uploads
from psfl.utils.lock import run_lock
from psfl.runners.store import CHECKPOINT, has_checkpoint, load_checkpoint, read_records, save_checkpoint

METRICS = "metrics.jsonl"
CONFIG = "config.toml"
PROVENANCE = "provenance.json"
GLOBAL_MODEL = "global_model.pt"  # the global model at the last finished round (`psfl transmit RUN_DIR`)


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, Any]]


@dataclass
class ClientFailure:
    """What an executor yields instead of a ClientResult for a client that raised, timed
    out or whose reply was lost: the round goes on without it (recorded in ``failed``)."""
    reason: str


@dataclass
class SecureAggregate:
    """What a secure-aggregation executor yields once per round (with cid -1), beside each
    client's ClientResult (whose payload is what the client sent under the protocol): the
    weighted mean (Eq. 10) of the decoded uploads of ``cids``, all the server learns."""
    mean: dict[str, torch.Tensor]
    cids: list[int]


# The clients of one round: (round, broadcast payload, participating cids, SNRs) ->
# (cid, ClientResult or ClientFailure, seconds of client compute) per client, in any order. The
# in-process default calls the method's client_update in turn; the Flower engine
# (psfl.runners.flower) sends messages to nodes. Everything else is the same loop.
ClientExecutor = Callable[[int, bytes, list[int], Any], Iterable[tuple[int, ClientResult, float]]]


def new_run_dir(root: str | Path = "runs", method: str = "psfl") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{method}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


RUN_FILES = (METRICS, CONFIG, PROVENANCE, GLOBAL_MODEL, CHECKPOINT, CHECKPOINT + ".sha256", "checkpoint.prev.pt",
             "checkpoint.prev.pt.sha256", "summary.txt", "accuracy.png", "loss.png", "psnr.png", "energy.png",
             "mentor_student_loss.png", "mentor_student_accuracy.png")


def holds_results(run_dir: Path) -> bool:
    """A folder with finished rounds or a checkpoint (what --overwrite would destroy)."""
    return bool(read_records(Path(run_dir) / METRICS, quiet=True)) or has_checkpoint(run_dir)


def clear_run(run_dir: Path) -> None:
    """Remove a run's own files (and Flower node states) from ``run_dir``, nothing else."""
    import shutil

    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / "nodes", ignore_errors=True)


@torch.no_grad()
def evaluate_global(method: FederatedMethod, env: FederatedEnv, rnd: int) -> dict[str, float]:
    """The global model on the global test subset at ``channel.eval_snr_db``: scorer
    accuracy (``accuracy``, the headline), the loss classifier's accuracy
    (``loss_clf_accuracy``), loss (CE + weighted MSE, as trained), PSNR and SSIM."""
    from psfl.evaluate import evaluate_reconstruction

    model, ev = method.global_model(), env.evaluators
    g = make_generator(env.seed, 0x6E7, rnd)
    return evaluate_reconstruction(model, ev.scorer, ev.test_x, ev.test_y, snr_db=method.cfg.channel.eval_snr_db,
                                   generator=g, input=ev.input, loss_classifier=ev.loss_classifier,
                                   mse_scale=ev.mse_scale)


def _json_safe(x: Any) -> Any:
    """Non-finite floats -> None: metrics never record NaN or inf as a number."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(_json_safe(record), allow_nan=False)


def run_federated(cfg: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                  env: FederatedEnv | None = None,
                  on_round: Callable[[dict[str, Any]], None] | None = None,
                  stop_after: int | None = None, command: list[str] | None = None,
                  device: str | torch.device = "cpu", strict: bool = True,
                  executor: Callable[[FederatedMethod], ClientExecutor] | None = None,
                  overwrite: bool = False) -> RunResult:
    """Run (or resume) ``cfg.rounds`` rounds of ``cfg.method`` into ``run_dir``.

    A folder that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (remove its run files first); a start that fails before its first
    round leaves no folder behind (if it created it).

    ``executor(method)`` gives the function that runs a round's clients (default: in
    this process, client states kept in the checkpoint); an external executor keeps
    client states where the clients run, and the checkpoint holds the server only.

    A fresh run writes ``config.toml`` and ``provenance.json`` (code, machine, data and
    partition fingerprints, evaluators, baselines); a resumed one checks the data and
    partition fingerprints against it and may extend ``rounds``. A non-finite loss,
    weight or global model raises :class:`psfl.utils.errors.DivergenceError` after every
    completed round has been kept."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PsflError(f"cannot create the run folder {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise PsflError(f"the run folder {run_dir} is not writable")
    try:
        with run_lock(run_dir):  # one writer per folder: a second one raises RunLockedError
            remove_stale_temporaries(run_dir)  # half-written files of a killed writer
            if not resume and holds_results(run_dir):
                if not overwrite:
                    raise PsflError(f"{run_dir} already holds a run; resume it (psfl run --resume {run_dir}), "
                                    "choose another --out, or pass --overwrite to replace it")
                clear_run(run_dir)
            return _run_federated(cfg, run_dir, resume, progress, env, on_round, stop_after, command, device,
                                  strict, executor)
    except BaseException:
        if created and not read_records(run_dir / METRICS, quiet=True):  # a failed start leaves no folder
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run_federated(cfg: RunConfig, run_dir: Path, resume: bool, progress: bool, env: FederatedEnv | None,
                   on_round: Callable[[dict[str, Any]], None] | None, stop_after: int | None,
                   command: list[str] | None, device: str | torch.device, strict: bool,
                   executor: Callable[[FederatedMethod], ClientExecutor] | None) -> RunResult:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    check_run_config(cfg, unused=strict)  # strict=False: a compare run sharing another method's config
    if cfg.server.secure_aggregation and executor is None:
        raise PsflError("config field server.secure_aggregation: secure aggregation runs on the Flower engine "
                        "(psfl run --engine flower, flwr run .); in one process the server holds every upload")
    if resume and env is None and has_checkpoint(run_dir):
        check_same_dataset(run_dir, run_dataset(cfg))  # before any work (evaluators train on it)
    env = env or build_env(cfg, progress=progress, device=device)
    method = METHODS.get(cfg.method)(env, options_for(cfg), cfg)
    K = cfg.data.num_clients
    metrics_path = run_dir / METRICS
    prov = run_provenance(cfg, env, command, method.model_presets())
    if resume and has_checkpoint(run_dir):
        check_same_data(run_dir, prov)
        ckpt = load_checkpoint(run_dir, env.models.device)  # the previous one if the latest is damaged
        method.load_server_state(ckpt["server"])
        client_states = ckpt["clients"]
        start = int(ckpt["round"])
        records = [r for r in read_records(metrics_path) if r["round"] < start]
        old = json.loads((run_dir / PROVENANCE).read_text())
        old.setdefault("resumes", []).append({"at_round": start, "rounds": cfg.rounds, **prov["runtime"]})
        _write_json(run_dir / PROVENANCE, old)
    else:
        method.init_server()
        client_states = [] if executor else [method.init_client(cid) for cid in range(K)]
        start, records = 0, []
        _write_json(run_dir / PROVENANCE, prov)
    (run_dir / CONFIG).write_text(dump_config(cfg))
    metrics_path.write_text("".join(_dumps(r) + "\n" for r in records))

    def in_process(rnd: int, payload: bytes, cids: list[int], snrs: Any):
        for cid in tqdm(cids, desc=f"round {rnd + 1} clients", leave=False, disable=not progress,
                        dynamic_ncols=True):
            tc = time.perf_counter()
            res = method.client_update(cid, client_states[cid], rnd, payload, float(snrs[cid]),
                                       make_generator(cfg.seed, rnd, cid, 0xC11))
            yield cid, res, time.perf_counter() - tc

    run_clients = executor(method) if executor else in_process
    if executor:
        client_states = []  # they live where the clients run
    e = cfg.energy
    rounds = tqdm(range(start, cfg.rounds), desc=f"{cfg.method} rounds", initial=start,
                  total=cfg.rounds, disable=not progress, dynamic_ncols=True)
    for rnd in rounds:
        t0 = time.perf_counter()
        snrs = round_snrs(cfg.channel.snr_trace, cfg.seed, rnd, K, cfg.channel.snr_min_db, cfg.channel.snr_max_db)
        tb = time.perf_counter()
        payload, server_metrics = method.broadcast(rnd, snrs)
        uploads, clients, compute_s = [], [], time.perf_counter() - tb  # time inside the method
        failed: list[dict[str, Any]] = []
        secure: SecureAggregate | None = None
        for cid, res, secs in sorted(run_clients(rnd, payload, method.participants(rnd, K), snrs),
                                     key=lambda t: t[0]):  # client order fixed: aggregation sums in cid order
            compute_s += secs
            if isinstance(res, SecureAggregate):
                secure = res
                continue
            if isinstance(res, ClientFailure):  # raised, timed out or lost on the way (external engines)
                failed.append({"cid": cid, "reason": res.reason})
                continue
            cost = link_cost(res.payload, float(snrs[cid]), e.bandwidth_hz, e.power_w)  # Eqs. 12-14
            uploads.append(Upload(cid, res.payload, env.data.volumes[cid]))
            clients.append({"cid": cid, "snr_db": float(snrs[cid]), "num_samples": env.data.volumes[cid],
                            "upload_bits": cost.bits, "rate_bps": cost.rate_bps, "delay_s": cost.delay_s,
                            "energy_j": cost.energy_j, **res.metrics})
        ta = time.perf_counter()
        if cfg.server.secure_aggregation:  # the server never sees one upload: nothing to screen
            if secure is None and uploads:
                raise PsflError("server.secure_aggregation: the engine returned uploads without a secure sum")
            accepted, rejected = [u for u in uploads if secure and u.cid in secure.cids], []
        else:
            accepted, rejected = screen_uploads(method, uploads, cfg.server.max_norm_ratio)
        for r in rejected:
            next(c for c in clients if c["cid"] == r.cid)["rejected"] = r.reason
            failed.append({"cid": r.cid, "reason": f"upload rejected: {r.reason}"})
        if failed:
            print(f"psfl: round {rnd + 1}: " + "; ".join(f"client {f['cid']}: {f['reason']}" for f in failed),
                  file=sys.stderr, flush=True)
        if len(accepted) < cfg.server.min_clients:
            raise RoundFailedError(f"round {rnd + 1}: {len(accepted)} acceptable upload(s), fewer than "
                                   f"server.min_clients = {cfg.server.min_clients}; the {rnd} completed round(s) "
                                   f"are kept (psfl run --resume {run_dir} retries the round)")
        if secure is not None:
            server_metrics.update(method.apply_mean(rnd, secure.mean))
        else:
            server_metrics.update(method.aggregate(rnd, accepted))  # weights renormalise over the accepted uploads
        check_state_finite(method.global_model().state_dict(), rnd, None, "global model weight")
        glob = evaluate_global(method, env, rnd)
        compute_s += time.perf_counter() - ta
        record = {
            "round": rnd, "method": cfg.method, **server_metrics,
            "downlink_bits": 8 * len(payload),
            "upload_bits": int(sum(c["upload_bits"] for c in clients)),
            "energy_j": float(sum(c["energy_j"] for c in clients)),
            "delay_s": float(max(c["delay_s"] for c in clients)),
            "mean_local_acc": float(sum(c["local_acc"] for c in clients) / len(clients)),
            **({"failed": failed} if failed else {}),
            **({"dp_epsilon": dp_epsilon(rnd + 1, cfg.privacy.noise_multiplier, cfg.privacy.delta,
                                         len(method.participants(rnd, K)) / K)}
               if cfg.privacy.noise_multiplier > 0 else {}),
            **method.round_metrics(clients),  # per-method summaries, named by the method
            "global": glob, "clients": clients,
            "time_s": time.perf_counter() - t0, "compute_s": compute_s,  # time_s - compute_s: runner overhead
        }
        check_finite(glob["loss"], rnd, None, "global test loss")
        records.append(record)
        with metrics_path.open("a") as f:
            f.write(_dumps(record) + "\n")
        save_checkpoint({"round": rnd + 1, "server": method.server_state(), "clients": client_states}, run_dir)
        rounds.set_postfix(acc=f"{glob['accuracy']:.3f}", psfl=f"{record['mean_local_acc']:.3f}")
        if on_round:
            on_round(record)
        if stop_after is not None and rnd + 1 >= stop_after:
            break
    if records:
        save_global_model(method, cfg, run_dir, len(records))
    return RunResult(run_dir, records)


def save_global_model(method: FederatedMethod, cfg: RunConfig, run_dir: Path, rounds_done: int) -> Path:
    """The global model as a psfl model file (:func:`psfl.models.save_model_checkpoint`)
    that records its dataset, input preset, method and round, so ``psfl transmit RUN_DIR``
    can show federated reconstructions; written atomically at the end of a run."""
    from psfl.models import MODELS, save_model_checkpoint

    model = method.global_model()
    preset = MODELS.get(model.preset["name"])
    path = run_dir / GLOBAL_MODEL
    with atomic_path(path) as tmp:
        save_model_checkpoint(model, tmp, config={
            "dataset": cfg.data.dataset, "input_preset": preset.input_preset, "method": cfg.method,
            "seed": cfg.seed, "rounds_done": rounds_done, "source": "federated run"})
    return path


def ensure_global_model(run_dir: Path, device: Any = "cpu") -> Path:
    """The run's ``global_model.pt``; a finished run made before runs wrote it gets it from
    its checkpoint (a resume with no round left to train)."""
    path = Path(run_dir) / GLOBAL_MODEL
    if not path.is_file() and (Path(run_dir) / CHECKPOINT).is_file():
        run_federated(resume_config(run_dir, strict=False), run_dir, resume=True, progress=False, device=device,
                      strict=False)
    return path


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def git_commit(where: Path | None = None) -> str | None:
    """The git commit of the source tree holding ``where`` (default: psfl's own code), with
    ``+dirty`` when a tracked file outside ``results/`` has uncommitted changes, or None when
    psfl does not run from a git checkout. ``results/`` is left out because it is what psfl
    writes: a figure command redrawing ten folders would otherwise call its own outputs
    uncommitted code (the evaluators there are named by their weight digests instead)."""
    import subprocess

    here = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)results"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_provenance(cfg: RunConfig, env: FederatedEnv, command: list[str] | None = None,
                   presets: list[str] | None = None) -> dict[str, Any]:
    """How a run was made: code, machine, command, data and partition fingerprints, the
    two evaluators (weight hashes, clean accuracy, training settings) and the trivial
    reconstruction baselines of its global test subset."""
    import platform
    import sys

    from psfl import __version__

    from psfl.utils.device import device_info

    runtime = {
        "psfl_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "device": str(env.models.device), "device_info": device_info(env.models.device),
        "threads": torch.get_num_threads(),
        "command": list(command) if command is not None else list(sys.argv),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    return {"runtime": runtime, **env.provenance,
            "models": model_records(env, presets if presets is not None else sorted(env.models.models()))}


def model_records(env: FederatedEnv, presets: list[str]) -> dict[str, Any]:
    """The run's SC models (``presets``, built by the environment's factory): parameters,
    channel width and what one image costs on the air (real channel symbols, k/n)."""
    from psfl.models import count_parameters

    out: dict[str, Any] = {"note": "k/n: complex channel symbols per source value of one image sent over the SC "
                                   "link; the run's bits and energy count model uploads (Eqs. 12-14), not these"}
    for preset in presets:
        m = env.models.model(preset)
        out[preset] = {"params": count_parameters(m), "channel_dim": m.channel_dim, "tokens": m.grid[0] * m.grid[1],
                       "channel_symbols": m.channel_symbols, "bandwidth_ratio": m.bandwidth_ratio,
                       "requested_bandwidth_ratio": env.models.bandwidth_ratio}
    return out


def check_same_dataset(run_dir: Path, ds: Any) -> None:
    """``--resume`` guard that needs only the data: the dataset's fingerprint must be the
    stored one (checked before the run builds anything, so that changed data is refused
    before evaluators are trained on it; :func:`check_same_data` checks the rest)."""
    path = run_dir / PROVENANCE
    if path.is_file():  # without one, check_same_data refuses the resume
        _same_fingerprint(run_dir, "dataset arrays", json.loads(path.read_text())["data"]["fingerprint"],
                          ds.fingerprint())


def _same_fingerprint(run_dir: Path, what: str, then: str, now: str) -> None:
    if then != now:
        raise PsflError(f"--resume {run_dir}: the {what} differ from the run's (fingerprint {now[:12]} now, "
                        f"{then[:12]} when it started); resume with the same data")


def check_same_data(run_dir: Path, prov: dict[str, Any]) -> None:
    """``--resume`` guard: the data and partition fingerprints must match the stored ones,
    and the models (parameters, channel width) the config builds now the stored ones (the
    same config builds other models since the presets default to a k/n)."""
    path = run_dir / PROVENANCE
    if not path.is_file():
        raise PsflError(f"{run_dir}: no {PROVENANCE}; cannot verify the data of this run")
    old = json.loads(path.read_text())
    for key, what in (("data", "dataset arrays"), ("partition", "client partition")):
        _same_fingerprint(run_dir, what, old[key]["fingerprint"], prov[key]["fingerprint"])
    why = models_mismatch(old.get("models"), prov["models"])
    if why:
        raise PsflError(f"--resume {run_dir}: {why}; it cannot be resumed with today's models")


def models_mismatch(stored: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Why a run's stored model record (``provenance.json["models"]``) differs from
    ``now`` (the same shape: per preset its ``channel_dim`` and ``params``), or None. A run
    recorded without one predates the presets' default k/n (the cpu presets had c = 64):
    the same config builds other models since."""
    if not stored:
        return f"its {PROVENANCE} records no models (made before the presets' default k/n, cpu presets at c = 64)"
    for preset, m in now.items():
        was = stored.get(preset)
        if isinstance(m, dict) and isinstance(was, dict) and \
                (was.get("channel_dim"), was.get("params")) != (m["channel_dim"], m["params"]):
            return (f"{preset} was built with c = {was.get('channel_dim')} ({was.get('params')} parameters), "
                    f"the config builds c = {m['channel_dim']} ({m['params']}) now")
    return None


_MODELS_NOW: dict[tuple[Any, ...], dict[str, int]] = {}


def model_now(cfg: RunConfig, preset: str) -> dict[str, int]:
    """Channel width and parameter count of ``preset`` as ``cfg`` builds it today (on the
    meta device), in the shape of a run's ``provenance.json["models"]`` entries."""
    from psfl.data import DATASETS, INPUT_PRESETS
    from psfl.models import MODELS, count_parameters, create_model

    info = DATASETS.get(cfg.data.dataset)
    student = cfg.model.student or f"{cfg.model.family}-CSC"
    res = INPUT_PRESETS.get(MODELS.get(student).input_preset).resolve(info.size, info.channels)
    key = (preset, res.size, res.channels, cfg.model.ratio())
    if key not in _MODELS_NOW:
        m = create_model(preset, img_size=res.size, in_chans=res.channels, device="meta",
                         bandwidth_ratio=cfg.model.ratio())
        _MODELS_NOW[key] = {"channel_dim": m.channel_dim, "params": count_parameters(m)}
    return _MODELS_NOW[key]


def stored_models_problem(cfg: RunConfig, folder: Path) -> str | None:
    """Why the models of the run stored in ``folder`` (its provenance record) are not the
    ones ``cfg`` builds today (:func:`models_mismatch`); None when they are or nothing is
    stored yet."""
    from psfl.models import MODELS

    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text()).get("models")
    except (ValueError, OSError):
        return f"{path} cannot be read"
    presets = [p for p, m in (stored or {}).items() if isinstance(m, dict) and p in MODELS]
    return models_mismatch(stored, {p: model_now(cfg, p) for p in presets})


RESUMABLE = ("rounds",)  # the only fields --resume may change (extend a run)


def resume_config(run_dir: Path, overrides: list[str] | None = None, strict: bool = True) -> RunConfig:
    """The stored config of ``run_dir`` with ``overrides`` applied. Only ``rounds`` may
    change (to extend a finished or interrupted run, never below the rounds done);
    any other changed field raises naming it."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise PsflError(f"{run_dir} is not a run directory (no {CONFIG})")
    stored = check_run_config(load_config(path), unused=strict)
    if not overrides:
        return stored
    cfg = check_run_config(load_config(path, overrides), unused=strict)
    changed = [f for f in diff_configs(stored, cfg) if f not in RESUMABLE]
    if changed:
        raise PsflError(f"--resume {run_dir}: cannot change {', '.join(changed)} of an existing run "
                        f"(only {', '.join(RESUMABLE)}); start a new run instead")
    done = len(read_records(Path(run_dir) / METRICS))
    if cfg.rounds < done:
        raise PsflError(f"--resume {run_dir}: rounds={cfg.rounds} is below the {done} rounds already done")
    return cfg
