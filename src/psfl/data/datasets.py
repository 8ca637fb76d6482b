"""Datasets as uint8 arrays: a registry of dataset facts and a registry of sources.

``load_dataset(name, source, data_dir)`` returns an :class:`ArrayDataset` whose arrays were
checked once (keys, dtype, shapes, label range) with one clear :class:`PsflError` each.

Sources (registry :data:`SOURCES`):

- ``npz``: ``{data_dir}/{name}.npz`` in Keras layout (``x_train, y_train, x_test, y_test``).
- ``torchvision``: ``torchvision.datasets.<Class>(data_dir, download=True)``.
- ``bundled``: a small stratified sample shipped inside the package (Fashion-MNIST only).
- ``auto``: ``npz`` when ``data_dir`` holds the file, else the bundled sample when the
  dataset has one, else an error saying how to get the data.
"""
from __future__ import annotations

import hashlib
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from psfl.utils.errors import PsflError
from psfl.utils.registry import Registry

KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset (as in Sec. V-A of the paper)."""

    name: str
    num_classes: int
    size: int  # native square side in pixels
    channels: int  # 1 = grey (arrays N x H x W), 3 = colour (N x H x W x 3)
    npz_file: str
    torchvision_class: str
    class_names: tuple[str, ...]
    bundled_file: str | None = None  # sample inside psfl/data/bundled/, if any


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def _add(info: DatasetInfo) -> None:
    DATASETS.register(info.name)(info)


_add(DatasetInfo("mnist", 10, 28, 1, "mnist.npz", "MNIST", tuple(str(i) for i in range(10))))
_add(DatasetInfo(
    "fashion_mnist", 10, 28, 1, "fashion_mnist.npz", "FashionMNIST",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
     "Ankle boot"),
    bundled_file="fashion_mnist_sample.npz",
))
_add(DatasetInfo(
    "cifar10", 10, 32, 3, "cifar10.npz", "CIFAR10",
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
))
_add(DatasetInfo("cifar100", 100, 32, 3, "cifar100.npz", "CIFAR100",
                 tuple(str(i) for i in range(100))))


@dataclass(eq=False)
class ArrayDataset:
    """One dataset in memory. Images uint8 ``(N, H, W)`` (grey) or ``(N, H, W, C)``;
    labels int64 ``(N,)``. Arrays are read-only (datasets are cached and shared)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str  # where the arrays came from, for logs
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def info(self) -> DatasetInfo:
        return DATASETS.get(self.name)

    def fingerprint(self) -> str:
        """Hex digest of all four arrays (shapes, dtypes, bytes); computed once."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            for key in KEYS:
                a = np.ascontiguousarray(getattr(self, key))
                h.update(f"{key}{a.shape}{a.dtype.str}".encode())
                h.update(memoryview(a).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def validation_view(ds: ArrayDataset, samples: int, seed: int = 0) -> ArrayDataset:
    """``ds`` with ``samples`` of its *training* images held out as its test split, for
    tuning on validation data: the held-out images are drawn per class in proportion to
    the class counts (seeded; the same split for every run seed), the rest stays the
    training split, and the real test split is dropped, so nothing tuned on this view has
    seen a test image. The view has its own fingerprint (evaluators are trained on its
    training split only)."""
    n = int(ds.y_train.shape[0])
    if not 0 < samples < n:
        raise PsflError(f"data.validation_samples: must be in (0, {n}) for {ds.name}'s {n} training images, "
                        f"got {samples}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A11D]))
    counts = np.bincount(ds.y_train, minlength=ds.num_classes)
    quota = np.floor(samples * counts / n).astype(int)
    rest = samples - int(quota.sum())  # largest remainders get one more
    quota[np.argsort(-(samples * counts / n - quota), kind="stable")[:rest]] += 1
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(ds.y_train == c))[:q]
                                   for c, q in enumerate(quota) if q > 0]))
    keep = np.setdiff1d(np.arange(n), held)
    parts = {}
    for key, idx in (("x_train", keep), ("y_train", keep), ("x_test", held), ("y_test", held)):
        a = np.ascontiguousarray(getattr(ds, key.replace("test", "train"))[idx])
        a.setflags(write=False)
        parts[key] = a
    return ArrayDataset(ds.name, **parts, num_classes=ds.num_classes,
                        source=f"{ds.source}, validation view ({len(held)} training images held out as the test "
                               f"split, seed {seed}; the test split unused)")


# --------------------------------------------------------------------------- validation
def validate_arrays(info: DatasetInfo, arrays: Mapping[str, Any], origin: str) -> dict[str, np.ndarray]:
    """Check the Keras-layout arrays of ``info`` and normalise them: images uint8
    ``(N, H, W)`` or ``(N, H, W, C)`` (a trailing channel axis of 1 is dropped), labels int64
    ``(N,)``. Raises :class:`PsflError` naming ``origin`` and the first problem found."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        have = ", ".join(sorted(arrays)) or "none"
        raise PsflError(f"{origin}: missing keys {', '.join(missing)} (has: {have}); "
                        f"expected Keras layout {', '.join(KEYS)}")
    out: dict[str, np.ndarray] = {}
    expect = (info.size, info.size) if info.channels == 1 else (info.size, info.size, info.channels)
    for split in ("train", "test"):
        x = np.asarray(arrays[f"x_{split}"])
        y = np.asarray(arrays[f"y_{split}"])
        if x.dtype != np.uint8:
            raise PsflError(f"{origin}: x_{split} has dtype {x.dtype}, expected uint8 (pixels 0-255)")
        if x.ndim == 4 and x.shape[-1] == 1 and info.channels == 1:
            x = x[..., 0]
        if x.shape[1:] != expect:
            raise PsflError(f"{origin}: x_{split} has shape {x.shape}, expected (N, "
                            f"{', '.join(map(str, expect))}) for {info.name}")
        if len(x) == 0:
            raise PsflError(f"{origin}: x_{split} holds no images")
        if not np.issubdtype(y.dtype, np.integer):
            raise PsflError(f"{origin}: y_{split} has dtype {y.dtype}, expected integer class ids")
        if y.ndim == 2 and y.shape[1] == 1:  # Keras CIFAR labels are (N, 1)
            y = y[:, 0]
        if y.ndim != 1:
            raise PsflError(f"{origin}: y_{split} has shape {y.shape}, expected (N,) class ids")
        if len(y) != len(x):
            raise PsflError(f"{origin}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= info.num_classes:
            raise PsflError(f"{origin}: y_{split} has labels outside [0, {info.num_classes}) "
                            f"(min {lo}, max {hi}) for {info.name}")
        x = np.ascontiguousarray(x)
        y = y.astype(np.int64)
        x.setflags(write=False)
        y.setflags(write=False)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _dataset(info: DatasetInfo, arrays: Mapping[str, Any], origin: str, source: str) -> ArrayDataset:
    a = validate_arrays(info, arrays, origin)
    return ArrayDataset(info.name, a["x_train"], a["y_train"], a["x_test"], a["y_test"],
                        info.num_classes, source)


_LOADED: OrderedDict[tuple, ArrayDataset] = OrderedDict()
_LOADED_MAX = 4


def read_npz(info: DatasetInfo, path: Path, source: str) -> ArrayDataset:
    """Load and validate a Keras-layout ``.npz`` file.

    Memoised on (path, mtime, size): reading the same file again returns the same read-only
    object, so :func:`psfl.data.prepare` reuses its preprocessing cache across callers."""
    if not path.is_file():
        raise PsflError(f"dataset file not found: {path} (expected a Keras-layout npz with keys "
                        f"{', '.join(KEYS)})")
    st = path.stat()
    key = (info.name, str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise PsflError(f"cannot read {path} as an npz file: {type(e).__name__}: {e}") from None
    if not hasattr(z, "files"):
        raise PsflError(f"{path} holds a single array, not an npz archive with keys {', '.join(KEYS)}")
    try:
        with z:
            ds = _dataset(info, z, str(path), source)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # damaged member
        raise PsflError(f"cannot read {path} as an npz file: {type(e).__name__}: {e}") from None
    _LOADED[key] = ds
    while len(_LOADED) > _LOADED_MAX:
        _LOADED.popitem(last=False)
    return ds


def clear_dataset_cache() -> None:
    """Forget memoised datasets."""
    _LOADED.clear()


# --------------------------------------------------------------------------- sources
Source = Callable[[DatasetInfo, "Path | None"], ArrayDataset]
SOURCES: Registry[Source] = Registry("data source")

DEFAULT_DOWNLOAD_DIR = Path.home() / ".cache" / "psfl" / "data"


def _need_data_hint(info: DatasetInfo) -> str:
    return (f"pass --data-dir DIR with {info.npz_file} (Keras layout: {', '.join(KEYS)}), "
            f"or use --source torchvision to download {info.torchvision_class}")


@SOURCES.register("npz")
def npz_source(info: DatasetInfo, data_dir: Path | None) -> ArrayDataset:
    """``{data_dir}/{info.npz_file}``."""
    if data_dir is None:
        raise PsflError(f"source 'npz' needs a data directory for {info.name}: {_need_data_hint(info)}")
    path = Path(data_dir).expanduser() / info.npz_file
    return read_npz(info, path, f"npz {path}")


def bundled_path(info: DatasetInfo) -> Path:
    """Path of the sample shipped in ``psfl/data/bundled/`` (error if none)."""
    if info.bundled_file is None:
        raise PsflError(f"no bundled sample for {info.name} (only for "
                        f"{', '.join(n for n in DATASETS if DATASETS.get(n).bundled_file)}); "
                        f"{_need_data_hint(info)}")
    ref = resources.files("psfl.data").joinpath("bundled", info.bundled_file)
    return Path(str(ref))


@SOURCES.register("bundled")
def bundled_source(info: DatasetInfo, data_dir: Path | None) -> ArrayDataset:
    """The small stratified sample inside the package (``data_dir`` is ignored)."""
    path = bundled_path(info)
    return read_npz(info, path, f"bundled sample {path.name}")


def torchvision_arrays(obj: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` numpy arrays of a torchvision dataset object with ``.data``
    (uint8 tensor N x H x W, or numpy N x H x W x C) and ``.targets`` (tensor or list)."""
    data, targets = obj.data, obj.targets
    data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    targets = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
    return data, targets


@SOURCES.register("torchvision")
def torchvision_source(info: DatasetInfo, data_dir: Path | None) -> ArrayDataset:
    """``torchvision.datasets.<info.torchvision_class>(root, train=..., download=True)``;
    ``root`` = ``data_dir`` or ``~/.cache/psfl/data``."""
    import torchvision.datasets as tvd

    root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DOWNLOAD_DIR
    cls = getattr(tvd, info.torchvision_class)
    arrays: dict[str, np.ndarray] = {}
    for split, train in (("train", True), ("test", False)):
        try:
            obj = cls(root=str(root), train=train, download=True)
        except Exception as e:  # network, disk or checksum problems: one clear message
            raise PsflError(f"torchvision could not provide {info.torchvision_class} ({split}) "
                            f"in {root}: {type(e).__name__}: {e}") from None
        arrays[f"x_{split}"], arrays[f"y_{split}"] = torchvision_arrays(obj)
    origin = f"torchvision {info.torchvision_class} in {root}"
    return _dataset(info, arrays, origin, origin)


@SOURCES.register("auto")
def auto_source(info: DatasetInfo, data_dir: Path | None) -> ArrayDataset:
    """``npz`` when a ``data_dir`` is given (the file must be there: an explicit data
    directory never falls back silently), else the bundled sample if there is one."""
    if data_dir is not None:
        path = Path(data_dir).expanduser() / info.npz_file
        if not path.is_file():
            raise PsflError(f"no data for {info.name}: {path} not found; {_need_data_hint(info)}")
        return npz_source(info, data_dir)
    if info.bundled_file is not None:
        return bundled_source(info, None)
    raise PsflError(f"no data for {info.name}: no data directory given; {_need_data_hint(info)}")


# --------------------------------------------------------------------------- loading
def load_dataset(name: str, source: str = "auto", data_dir: str | Path | None = None) -> ArrayDataset:
    """Load ``name`` (a key of :data:`DATASETS`) from ``source`` (a key of :data:`SOURCES`:
    ``auto``, ``npz``, ``bundled``, ``torchvision``); arrays validated, read-only."""
    try:
        info = DATASETS.get(name)
        load = SOURCES.get(source)
    except KeyError as e:
        raise PsflError(str(e.args[0])) from None
    return load(info, Path(data_dir).expanduser() if data_dir is not None else None)
