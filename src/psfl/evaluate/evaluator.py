"""Train, cache and load the frozen evaluator (the paper's pre-trained classifier).

The evaluator is trained on the *clean* training set prepared in the same input space as
the SC models (the model preset's input preset), so it scores reconstructions ``x_hat``
directly. Checkpoints are cached by (dataset, data fingerprint, input preset, arch) under
``cache_dir`` (default ``$PSFL_CACHE/evaluators`` or ``~/.cache/psfl/evaluators``).

Checkpoint format (also accepted from users with ``checkpoint=PATH``)::

    {"arch": "cnn", "state_dict": {...}, "num_classes": 10, "in_chans": 1, "img_size": 28,
     "info": {...EvaluatorInfo fields...}}   # "info" optional; a bare state dict also works
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psfl.utils.device import (device_info, module_device, nhwc_trains_safely, rand, resolve_device, seeded,
                               to_device)
from psfl.utils.errors import PsflError
from psfl.evaluate.classifiers import CLASSIFIERS, FrozenClassifier, classifier_accuracy, create_classifier
from psfl.utils.fileio import atomic_path, write_text_atomic


@dataclass
class EvaluatorInfo:
    arch: str
    dataset: str
    source: str
    fingerprint: str  # content hash of the dataset arrays (first 16 hex digits)
    input_preset: str
    img_size: int
    in_chans: int
    num_classes: int
    epochs: int
    seed: int
    test_accuracy: float  # clean test accuracy
    train_seconds: float
    path: str = ""
    device: str = "cpu"  # where it was trained, e.g. "cuda:0 (NVIDIA H200)"
    recipe: str = ""  # the rest of how it was trained (optimiser, lr, batch, augmentation)


def _info(fields: dict[str, Any]) -> EvaluatorInfo:
    """EvaluatorInfo from saved fields; fields a newer psfl added are ignored."""
    known = {f.name for f in dataclasses.fields(EvaluatorInfo)}
    return EvaluatorInfo(**{k: v for k, v in fields.items() if k in known})


def default_cache_dir() -> Path:
    root = os.environ.get("PSFL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "psfl") / "evaluators"


def dataset_fingerprint(ds: Any) -> str:
    """Short content hash of a dataset's four arrays (``ArrayDataset.fingerprint``)."""
    return ds.fingerprint()[:16]


TRAIN_DEFAULTS = {"batch_size": 128, "lr": 3e-3, "hflip": False}


def cache_path(cache_dir: Path, dataset: str, input_preset: str, arch: str, fingerprint: str,
               epochs: int = 3, seed: int = 0, batch_size: int = 128, lr: float = 3e-3, hflip: bool = False) -> Path:
    """Cache file of an evaluator: every setting that changes its weights is in the name
    (dataset, data fingerprint, input preset, arch, epochs, seed) or in the hash of the
    remaining training settings, so a cache hit is the same network."""
    import hashlib

    extra = hashlib.blake2b(repr((batch_size, float(lr), bool(hflip), _FIT_VERSION)).encode(),
                            digest_size=4).hexdigest()
    return Path(cache_dir) / f"{dataset}__{input_preset}__{arch}__e{epochs}__s{seed}__{fingerprint}__{extra}.pt"


_FIT_VERSION = 1  # bump when fit_classifier's recipe changes (invalidates cached evaluators)


def fit_classifier(net: nn.Module, x: Tensor, y: Tensor, epochs: int, batch_size: int, lr: float,
                   generator: torch.Generator, weight_decay: float = 5e-4, hflip: bool = False,
                   progress: bool = True, desc: str = "evaluator") -> list[dict[str, float]]:
    """Plain supervised training: AdamW with a one-cycle learning rate, cross-entropy.
    ``hflip``: random horizontal flips (natural images only). Returns per-epoch stats.
    Trains on ``net``'s device (``x``, ``y`` may stay on the CPU); shuffles and flips come
    from ``generator`` (CPU), dropout from the device's RNG seeded from it."""
    from tqdm.auto import tqdm

    # NHWC: faster narrow convs on CPU, where oneDNN trains the net safely in it
    fmt = torch.channels_last if nhwc_trains_safely(net) else torch.contiguous_format
    net.to(memory_format=fmt)
    dev = module_device(net)
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    # Dropout draws from torch's global RNG (of the device): seed it from ``generator``
    # inside a fork so training is reproducible across processes and the caller's RNG is
    # untouched.
    with seeded(int(torch.randint(0, 2**62, (1,), generator=generator)), dev):
        history = _fit_epochs(net, x, y, epochs, batch_size, generator, opt, sched, hflip, bar, dev, fmt)
    bar.close()
    net.to(memory_format=torch.contiguous_format)  # as a checkpoint loads: identical numerics
    net.eval()
    return history


def _fit_epochs(net, x, y, epochs, batch_size, generator, opt, sched, hflip, bar, dev, fmt) -> list[dict[str, float]]:
    from psfl.data import iterate_batches

    history = []
    for epoch in range(epochs):
        net.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for xb, yb in iterate_batches(x, y, batch_size, generator, shuffle=True):
            xb, yb = to_device(xb, dev), to_device(yb, dev)
            if hflip:
                flip = rand((xb.shape[0],), generator, device=dev) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(net(xb.contiguous(memory_format=fmt)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += xb.shape[0]
            loss_sum += float(loss.detach()) * xb.shape[0]
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}")
        dt = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": loss_sum / max(seen, 1), "seconds": dt,
                        "samples_per_s": seen / dt if dt > 0 else float("nan")})
    return history


def _save(net: nn.Module, info: EvaluatorInfo, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}  # loads anywhere
    payload = {"arch": info.arch, "state_dict": state, "num_classes": info.num_classes,
               "in_chans": info.in_chans, "img_size": info.img_size, "info": dataclasses.asdict(info)}
    # atomic, and safe when two processes (`reproduce --jobs`, test workers) train the same one
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    write_text_atomic(path.with_suffix(".json"), json.dumps(dataclasses.asdict(info), indent=2) + "\n")


def _load(dataset: str, source: str, data_dir: str | None) -> Any:
    from psfl import data as D

    return D.load_dataset(dataset, source=source, data_dir=data_dir)


def _prepare(ds: Any, input_preset: str) -> Any:
    from psfl import data as D

    return D.prepare(ds, D.INPUT_PRESETS.get(input_preset))


def train_evaluator(dataset: str, source: str = "auto", data_dir: str | None = None,
                    input_preset: str = "native", arch: str = "cnn", epochs: int = 3,
                    batch_size: int = 128, lr: float = 3e-3, seed: int = 0, hflip: bool = False,
                    cache_dir: str | Path | None = None, progress: bool = True,
                    dataset_obj: Any = None, device: str | torch.device = "cpu") -> FrozenClassifier:
    """Train ``arch`` on the clean training set (in ``input_preset`` space), measure clean
    test accuracy, cache the checkpoint (CPU tensors) and return the frozen classifier
    (``.info``) on ``device`` (auto / cpu / cuda[:i]), where it is also trained.
    ``dataset_obj``: an already loaded ``psfl.data`` dataset (skips loading)."""
    dev = resolve_device(device)
    CLASSIFIERS.get(arch)  # fail early on a bad name
    if epochs < 1:
        raise PsflError(f"evaluator epochs must be >= 1, got {epochs}")
    ds = dataset_obj if dataset_obj is not None else _load(dataset, source, data_dir)
    prepared = _prepare(ds, input_preset)
    res = prepared.input
    num_classes = int(ds.num_classes)
    with seeded(seed):  # seeded init (on the CPU) without touching global state
        net = create_classifier(arch, res.channels, num_classes, res.size)
    net.to(dev)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    fit_classifier(net, prepared.x_train, prepared.y_train, epochs, batch_size, lr, g, hflip=hflip,
                   progress=progress, desc=f"evaluator {arch} on {dataset}")
    seconds = time.perf_counter() - t0
    acc = classifier_accuracy(net, prepared.x_test, prepared.y_test)
    fp = dataset_fingerprint(ds)
    path = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), dataset, res.name, arch, fp,
                      epochs, seed, batch_size, lr, hflip)
    where = device_info(dev)
    info = EvaluatorInfo(arch, dataset, str(getattr(ds, "source", source)), fp, res.name, res.size, res.channels,
                         num_classes, epochs, seed, acc, seconds, str(path), f"{where['device']} ({where['name']})",
                         f"AdamW one-cycle, max lr {lr:g}, weight decay 5e-4, batch {batch_size}, "
                         f"hflip {bool(hflip)}, cross-entropy on the clean training split")
    _save(net, info, path)
    return load_classifier_checkpoint(path).to(dev)  # exactly what later runs will load


def load_classifier_checkpoint(path: str | Path, arch: str | None = None, num_classes: int | None = None,
                               in_chans: int | None = None, img_size: int | None = None) -> FrozenClassifier:
    """A classifier from a checkpoint dict ``{"arch", "state_dict", ...}`` (or a bare state
    dict plus ``arch`` and the shape arguments), on the CPU (``.to(device)`` it)."""
    path = Path(path)
    if not path.is_file():
        raise PsflError(f"evaluator checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise PsflError(f"evaluator checkpoint {path} cannot be read: {e}") from None
    if not isinstance(obj, dict):
        raise PsflError(f"evaluator checkpoint {path}: expected a dict, got {type(obj).__name__}")
    wrapped = "state_dict" in obj
    state = obj["state_dict"] if wrapped else obj
    meta = obj if wrapped else {}
    arch = meta.get("arch", arch)
    shape = {"num_classes": meta.get("num_classes", num_classes), "in_chans": meta.get("in_chans", in_chans),
             "img_size": meta.get("img_size", img_size)}
    missing = [k for k, v in {"arch": arch, **shape}.items() if v is None]
    if missing:
        raise PsflError(f"evaluator checkpoint {path} does not say {', '.join(missing)}; "
                        "save {'arch', 'state_dict', 'num_classes', 'in_chans', 'img_size'}")
    if arch not in CLASSIFIERS:
        raise PsflError(f"evaluator checkpoint {path}: unknown arch {arch!r}; known: {', '.join(CLASSIFIERS.names())}")
    net = create_classifier(arch, int(shape["in_chans"]), int(shape["num_classes"]), int(shape["img_size"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise PsflError(f"evaluator checkpoint {path} does not fit arch {arch!r}: {str(e).splitlines()[0]}") from None
    info = _info(meta["info"]) if "info" in meta else None
    if info is not None:
        info.path = str(path)
    return FrozenClassifier(net, info)


def load_evaluator(dataset: str, source: str = "auto", data_dir: str | None = None,
                   input_preset: str = "native", arch: str = "cnn", epochs: int = 3,
                   checkpoint: str | Path | None = None, cache_dir: str | Path | None = None,
                   train_if_missing: bool = True, progress: bool = True, seed: int = 0,
                   dataset_obj: Any = None, device: str | torch.device = "cpu") -> FrozenClassifier:
    """The frozen evaluator for (dataset, input preset, arch, epochs, seed) on ``device``:
    a user ``checkpoint`` if given, else the cached one, else (``train_if_missing``) train
    (on ``device``) and cache it. ``dataset_obj``: an already loaded dataset (skips loading)."""
    from psfl.data import resolve_for

    dev = resolve_device(device)
    ds = dataset_obj if dataset_obj is not None else _load(dataset, source, data_dir)
    res = resolve_for(ds, input_preset)
    if checkpoint:
        return load_classifier_checkpoint(checkpoint, arch, int(ds.num_classes), res.channels, res.size).to(dev)
    CLASSIFIERS.get(arch)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_path(root, dataset, res.name, arch, dataset_fingerprint(ds), epochs, seed)
    if path.is_file():
        return load_classifier_checkpoint(path).to(dev)
    if not train_if_missing:
        raise PsflError(f"no cached evaluator {path.name} in {path.parent}; train one with "
                        f"`psfl evaluator train --dataset {dataset} --input-preset {input_preset} --arch {arch}`")
    from psfl.utils.lock import wait_lock

    path.parent.mkdir(parents=True, exist_ok=True)
    # processes started together (psfl reproduce --jobs, psfl tune pieces, test workers)
    # need the same evaluators: one trains each, the others wait and read it
    with wait_lock(path.with_name(path.name + ".lock"), waiting=f"psfl: waiting for {path.name}"):
        if path.is_file():
            return load_classifier_checkpoint(path).to(dev)
        print(f"psfl: no cached evaluator for {dataset}/{input_preset}/{arch}; training one "
              f"({epochs} epochs, cached at {path})", file=sys.stderr)
        return train_evaluator(dataset, source, data_dir, input_preset, arch, epochs, seed=seed,
                               cache_dir=cache_dir, progress=progress, dataset_obj=ds, device=dev)


def list_evaluators(cache_dir: str | Path | None = None) -> list[EvaluatorInfo]:
    """Metadata of every cached evaluator (from the ``.json`` sidecars)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    out = []
    for p in sorted(root.glob("*.json")):
        try:
            info = _info(json.loads(p.read_text()))
        except (ValueError, TypeError):
            continue  # not ours / corrupt: skip
        info.path = str(p.with_suffix(".pt"))
        out.append(info)
    return out


def seed_cache(folder: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """Put the trained evaluators kept in ``folder`` (``.pt`` + ``.json``, named as in the
    cache) into the cache where it lacks them, so that every machine trains against and
    scores with the same classifiers (two trainings on different CPUs drift apart).
    Returns the names copied; raises where the cache holds other weights under a name."""
    src, cache = Path(folder), Path(cache_dir) if cache_dir else default_cache_dir()
    copied = []
    for f in sorted(src.glob("*.pt")):
        dst = cache / f.name
        if not dst.is_file():
            _copy_with_sidecar(f, cache)
            copied.append(f.name)
        elif dst.read_bytes() != f.read_bytes():
            raise PsflError(f"{dst} differs from {f}: this cache holds other weights under the same name "
                            "(trained on another machine); move it away to use the kept ones")
    return copied


def keep_evaluators(used: dict[str, str | None], folder: str | Path) -> tuple[list[str], list[str]]:
    """Copy the cached evaluators ``used`` (``.pt`` path -> the weights digest a run
    recorded, or None) into ``folder`` where it lacks them, so that they can be committed
    with the results they scored; the ``.json`` beside each goes along. A file whose
    weights no longer have the recorded digest (retrained since) is not copied.
    Returns (names copied, notes on the ones skipped)."""
    from psfl.models.checkpoints import state_digest

    dst = Path(folder)
    copied, notes = [], []
    for p, digest in ((Path(k), v) for k, v in used.items()):
        if not p.is_file() or (dst / p.name).is_file():
            continue
        if digest and state_digest(load_classifier_checkpoint(p).state_dict()) != digest:
            notes.append(f"{p} now holds other weights than the runs used ({digest}); not kept")
            continue
        _copy_with_sidecar(p, dst)
        copied.append(p.name)
    return copied, notes


def share_evaluators(folder: str | Path, cache_dirs: Iterable[str | Path | None], provenances: Iterable[Path],
                     log: Callable[[str], None], who: str = "psfl") -> None:
    """Keep a folder of evaluators (e.g. ``results/evaluators``) in step with runs: the
    ones kept there go into each of ``cache_dirs`` (None: the default cache) where it
    lacks them (:func:`seed_cache`), and the ones that the runs' ``provenances``
    (``provenance.json`` paths; missing ones are skipped) record are copied there
    (:func:`keep_evaluators`), to be committed with the runs they scored."""
    folder = Path(folder)
    if folder.is_dir():
        for cache in dict.fromkeys(cache_dirs):
            for name in seed_cache(folder, cache):
                log(f"{who}: evaluator {name} from {folder}")
    used: dict[str, str | None] = {}
    for prov in provenances:
        if prov.is_file():
            for e in json.loads(prov.read_text()).get("evaluators", {}).values():
                if e.get("path"):
                    used.setdefault(e["path"], e.get("weights_blake2b"))
    copied, notes = keep_evaluators(used, folder)
    for name in copied:
        log(f"{who}: kept evaluator {name} in {folder} (commit it with the runs)")
    for note in notes:
        log(f"{who}: {note}")


def _copy_with_sidecar(pt: Path, folder: Path) -> None:
    """Copy an evaluator ``.pt`` and the ``.json`` beside it (if any) into ``folder``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for part in (pt, pt.with_suffix(".json")):
        if part.is_file():
            shutil.copy2(part, folder / part.name)
