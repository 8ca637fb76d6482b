"""Split a training set over K clients (MUs): label skew by a Dirichlet distribution.

Sec. V-A of the paper draws the non-IID partition from a Dirichlet distribution with
concentration r (0.9 by default, Fig. 6 shows r = 0.3, 0.6, 0.9 on CIFAR-10) and gives the
local data volumes of the 9 clients in Table I. :func:`make_partition` does both:

- ``dirichlet``: for every class c, client proportions ``p_c ~ Dir(r, ..., r)`` (as in
  flwr-datasets' ``DirichletPartitioner``; small r = strong label skew).
  * Without target sizes, class c is split by ``p_c`` (largest-remainder rounding), so client
    sizes are random. A minimum client size is reached by at most ``MAX_DRAWS`` draws; if no
    draw satisfies it, the last draw is repaired deterministically: the smallest client takes
    samples from the largest client's most frequent class until it has ``min_size`` (never an
    unbounded resampling loop).
  * With target sizes ``s_k`` the drawn matrix ``P[c, k] = p_c[k]`` is the seed of iterative
    proportional fitting: rows and columns are rescaled in turn until every client k sums to
    ``s_k`` and every class c to its share ``N_c * sum(s) / N`` (the KL-closest matrix to the
    Dirichlet draw with those margins: label skew from r, volumes from the targets). It is then
    rounded to integers that meet both margins exactly.
- ``iid``: a random permutation cut into K near-equal parts (or into the target sizes).

Each client's samples are finally split into local train and local test
(``local_test_fraction``, seeded). Everything is drawn from one ``np.random.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from psfl.utils.errors import PsflError
from psfl.utils.registry import Registry

# Local data volumes of the 9 clients in Table I (they sum to 50000, CIFAR-10's training set).
TABLE1_VOLUMES = (1854, 3703, 4429, 4783, 5467, 5634, 5891, 8958, 9281)
MAX_DRAWS = 10  # Dirichlet draws tried for the minimum size before the deterministic repair
_IPF_ITERS = 2000
_IPF_TOL = 1e-10


@dataclass
class Partition:
    """Indices into the training split, per client."""

    train_indices: list[np.ndarray]  # local training samples of client k (sorted)
    test_indices: list[np.ndarray]  # local test samples of client k (sorted, disjoint from train)
    class_counts: np.ndarray  # (K, num_classes): all local samples (train + local test) per class
    scheme: str = ""
    alpha: float | None = None

    @property
    def num_clients(self) -> int:
        return len(self.train_indices)

    @property
    def sizes(self) -> np.ndarray:
        """Local data volume N_k (train + local test) per client."""
        return self.class_counts.sum(axis=1)

    def train_class_counts(self, labels: np.ndarray) -> np.ndarray:
        """(K, num_classes) counts of the local training samples only."""
        c = self.class_counts.shape[1]
        return np.stack([np.bincount(labels[i], minlength=c) for i in self.train_indices])


# --------------------------------------------------------------------------- sizes
def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers proportional to ``weights`` that sum exactly to ``total``."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    out = np.floor(exact).astype(np.int64)
    short = int(total - out.sum())
    if short > 0:
        order = np.argsort(-(exact - out), kind="stable")
        out[order[:short]] += 1
    return out


def table1_sizes(n_total: int, k: int = 9) -> list[int]:
    """Table I's client volumes scaled to ``n_total`` samples (summing to ``n_total``).

    For ``k != 9`` the increasing Table I profile is linearly interpolated at ``k`` evenly
    spaced positions (k=3 -> volumes like clients 0, 4 and 8), then scaled."""
    if k < 1:
        raise PsflError(f"number of clients must be >= 1, got {k}")
    if n_total < k:
        raise PsflError(f"cannot give {k} clients Table I volumes from {n_total} samples")
    ref = np.asarray(TABLE1_VOLUMES, dtype=np.float64)
    profile = ref if k == len(ref) else np.interp(np.linspace(0, len(ref) - 1, k),
                                                   np.arange(len(ref)), ref)
    out = largest_remainder(profile, n_total)
    for _ in range(k):  # tiny totals: every client keeps at least one sample
        if out.min() > 0:
            break
        out[np.argmax(out)] -= 1
        out[np.argmin(out)] += 1
    return [int(v) for v in out]


def parse_sizes(sizes: str | Sequence[int] | None, n_total: int, k: int) -> list[int] | None:
    """``None``/``"none"`` -> None; ``"table1"`` -> :func:`table1_sizes`; ``"a,b,c"`` or a
    sequence of ints -> that list."""
    if sizes is None:
        return None
    if isinstance(sizes, str):
        text = sizes.strip().lower()
        if text in ("", "none"):
            return None
        if text == "table1":
            return table1_sizes(n_total, k)
        try:
            return [int(v) for v in text.split(",")]
        except ValueError:
            raise PsflError(f"sizes {sizes!r}: expected 'table1', 'none' or comma-separated "
                            f"integers") from None
    return [int(v) for v in sizes]


# --------------------------------------------------------------------------- schemes
class Partitioner(Protocol):
    """A scheme decides only how many samples of each class each client gets;
    :func:`make_partition` then hands out the (shuffled) indices."""

    def __call__(self, labels: np.ndarray, num_classes: int, num_clients: int,
                 sizes: np.ndarray | None, alpha: float, min_size: int,
                 rng: np.random.Generator) -> np.ndarray:
        """(num_classes, K) sample counts; each class count <= the class's samples."""


PARTITIONERS: Registry[Partitioner] = Registry("partition scheme")


def _class_totals(class_n: np.ndarray, total: int) -> np.ndarray:
    """Per-class targets summing to ``total``, proportional to ``class_n``, each <= class_n."""
    return largest_remainder(class_n, total) if total < class_n.sum() else class_n.copy()


@PARTITIONERS.register("iid")
def iid_counts(labels: np.ndarray, num_classes: int, num_clients: int, sizes: np.ndarray | None,
               alpha: float, min_size: int, rng: np.random.Generator) -> np.ndarray:
    """IID: a uniformly random permutation cut into K parts (``sizes`` or near-equal)."""
    n = len(labels)
    if sizes is None:
        sizes = n // num_clients + (np.arange(num_clients) < n % num_clients).astype(np.int64)
    perm = rng.permutation(n)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return np.stack([np.bincount(labels[perm[bounds[k]:bounds[k + 1]]], minlength=num_classes)
                     for k in range(num_clients)], axis=1)  # (C, K)


def draw_class_proportions(num_classes: int, num_clients: int, alpha: float,
                           rng: np.random.Generator) -> np.ndarray:
    """(num_classes, K): row c ~ Dir(alpha, ..., alpha) over the clients."""
    return rng.dirichlet(np.full(num_clients, alpha), size=num_classes)


def top_up(counts: np.ndarray, min_size: int) -> np.ndarray:
    """Deterministic repair of a (C, K) count matrix: while a client has fewer than
    ``min_size`` samples, move samples of the largest client's most frequent class to it
    (never below ``min_size`` for the donor). Needs ``min_size * K <= counts.sum()``."""
    counts = counts.copy()
    sizes = counts.sum(axis=0)
    # Every move either fills a deficit, exhausts a donor class or a donor's surplus,
    # so the loop ends after at most K * (C + 2) moves.
    for _ in range(counts.shape[1] * (counts.shape[0] + 2)):
        k = int(np.argmin(sizes))
        need = min_size - int(sizes[k])
        if need <= 0:
            break
        donor = int(np.argmax(sizes))
        c = int(np.argmax(counts[:, donor]))
        t = min(need, int(counts[c, donor]), int(sizes[donor]) - min_size)
        if t <= 0:
            raise PsflError(f"cannot give every client {min_size} samples")
        counts[c, donor] -= t
        counts[c, k] += t
        sizes[donor] -= t
        sizes[k] += t
    return counts


def fit_margins(seed: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Iterative proportional fitting: rescale rows and columns of a positive ``seed``
    matrix in turn until its row sums are ``rows`` and column sums ``cols``."""
    m = np.maximum(seed, 1e-12) * 1.0
    rows = rows.astype(np.float64)
    cols = cols.astype(np.float64)
    for _ in range(_IPF_ITERS):
        m *= _ratio(cols, m.sum(axis=0))[None, :]
        m *= _ratio(rows, m.sum(axis=1))[:, None]
        if np.abs(m.sum(axis=0) - cols).max() <= _IPF_TOL * max(1.0, cols.max()):
            break
    return m


def _ratio(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """target / current, 0 where current is 0 (empty classes or clients stay empty)."""
    return np.divide(target, current, out=np.zeros_like(target), where=current > 0)


def round_margins(m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Integer matrix close to the real matrix ``m`` with row sums ``rows`` and column sums
    ``cols`` exactly (``rows.sum() == cols.sum()``): floor, repair columns that overshoot,
    then add the missing units to the cells with the largest fractional parts, finally
    (north-west corner) wherever a row and a column still miss units."""
    if rows.sum() != cols.sum():
        raise ValueError(f"margins differ: rows sum to {rows.sum()}, columns to {cols.sum()}")
    m = m * _ratio(rows.astype(np.float64), m.sum(axis=1))[:, None]  # rows exact in reals
    n = np.floor(m).astype(np.int64)
    r = rows - n.sum(axis=1)  # >= 0 (a row of zeros with rows[c] > 0 is filled below)
    d = cols - n.sum(axis=0)
    for _ in range(int(-d[d < 0].sum())):  # only if the fit had not converged
        if (d >= 0).all():
            break
        k, j = int(np.argmin(d)), int(np.argmax(d))
        c = int(np.argmax(n[:, k]))
        t = min(-int(d[k]), int(d[j]), int(n[c, k]))
        n[c, k] -= t
        n[c, j] += t
        d[k] += t
        d[j] -= t
    frac = (m - np.floor(m)).ravel()
    for flat in np.argsort(-frac, kind="stable"):
        if r.sum() == 0:
            break
        c, k = divmod(int(flat), m.shape[1])
        if r[c] > 0 and d[k] > 0:
            n[c, k] += 1
            r[c] -= 1
            d[k] -= 1
    for _ in range(len(r) + len(d)):  # each step empties a row or a column
        if r.sum() == 0:
            break
        c, k = int(np.argmax(r)), int(np.argmax(d))
        t = min(int(r[c]), int(d[k]))
        n[c, k] += t
        r[c] -= t
        d[k] -= t
    return n


@PARTITIONERS.register("dirichlet")
def dirichlet_counts(labels: np.ndarray, num_classes: int, num_clients: int,
                     sizes: np.ndarray | None, alpha: float, min_size: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Label skew: class c goes to the clients in proportions ``p_c ~ Dir(alpha)``
    (see the module docstring for target sizes and the minimum size)."""
    class_n = np.bincount(labels, minlength=num_classes)
    if sizes is not None:
        seed = draw_class_proportions(num_classes, num_clients, alpha, rng)
        targets = _class_totals(class_n, int(sizes.sum()))
        return round_margins(fit_margins(seed, targets, sizes), targets, sizes)
    counts = None
    for _ in range(MAX_DRAWS):
        p = draw_class_proportions(num_classes, num_clients, alpha, rng)
        counts = np.stack([largest_remainder(p[c], int(class_n[c])) for c in range(num_classes)])
        if counts.sum(axis=0).min() >= min_size:
            return counts
    return top_up(counts, min_size)


# --------------------------------------------------------------------------- driver
def _validate(n: int, num_classes: int, num_clients: int, alpha: float, sizes: list[int] | None,
              min_size: int, local_test_fraction: float) -> None:
    if num_clients < 1:
        raise PsflError(f"number of clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise PsflError(f"more clients ({num_clients}) than training samples ({n})")
    if not alpha > 0:
        raise PsflError(f"Dirichlet concentration r (alpha) must be > 0, got {alpha}")
    if not 0.0 <= local_test_fraction < 1.0:
        raise PsflError(f"local_test_fraction must be in [0, 1), got {local_test_fraction}")
    if min_size < 0:
        raise PsflError(f"min_size must be >= 0, got {min_size}")
    if num_classes < 1:
        raise PsflError(f"num_classes must be >= 1, got {num_classes}")
    if sizes is None:
        if min_size * num_clients > n:
            raise PsflError(f"min_size {min_size} x {num_clients} clients exceeds the {n} samples")
        return
    if len(sizes) != num_clients:
        raise PsflError(f"sizes has {len(sizes)} entries for {num_clients} clients")
    if min(sizes) < max(min_size, 1):
        raise PsflError(f"sizes {sizes}: every client needs at least {max(min_size, 1)} samples "
                        f"(min_size)")
    if sum(sizes) > n:
        raise PsflError(f"sizes sum to {sum(sizes)}, more than the {n} training samples")


def split_local_test(indices: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, test) split of one client's indices; test gets ``round(fraction * n)``
    samples but train keeps at least one."""
    n = len(indices)
    n_test = min(int(round(fraction * n)), max(n - 1, 0))
    perm = rng.permutation(indices)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def make_partition(labels: np.ndarray, *, num_classes: int | None = None, num_clients: int = 9,
                   scheme: str = "dirichlet", alpha: float = 0.9,
                   sizes: str | Sequence[int] | None = None, min_size: int = 10,
                   local_test_fraction: float = 0.2, seed: int = 0,
                   rng: np.random.Generator | None = None) -> Partition:
    """Partition the training ``labels`` over ``num_clients`` clients.

    ``scheme`` is a key of :data:`PARTITIONERS` (``dirichlet``, ``iid``); ``alpha`` is the
    Dirichlet concentration r; ``sizes`` = None/"none" (sizes follow the scheme),
    "table1" (:func:`table1_sizes`), "a,b,..." or a list of ints; ``min_size`` is the
    guaranteed number of samples per client. Draws from ``rng`` or, if None,
    ``np.random.default_rng(seed)``: same seed, same partition."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    n = len(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 1
    try:
        partitioner = PARTITIONERS.get(scheme)
    except KeyError as e:
        raise PsflError(str(e.args[0])) from None
    target = parse_sizes(sizes, n, num_clients) if num_clients >= 1 and n >= num_clients else None
    _validate(n, num_classes, num_clients, alpha, target, min_size, local_test_fraction)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise PsflError(f"labels outside [0, {num_classes})")
    rng = rng if rng is not None else np.random.default_rng(seed)
    counts = partitioner(labels, num_classes, num_clients,
                         None if target is None else np.asarray(target, np.int64),
                         alpha, min_size, rng)  # (C, K)
    # Hand out each class's (shuffled) samples in blocks of counts[c, k].
    owned: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.concatenate([[0], np.cumsum(counts[c])])
        for k in range(num_clients):
            owned[k].append(idx[bounds[k]:bounds[k + 1]])
    train, test = [], []
    for k in range(num_clients):
        tr, te = split_local_test(np.concatenate(owned[k]), local_test_fraction, rng)
        train.append(tr)
        test.append(te)
    return Partition(train, test, counts.T.copy(), scheme, alpha if scheme == "dirichlet" else None)


def local_test_from_test_split(partition: Partition, y_train: np.ndarray, y_test: np.ndarray,
                               seed: int) -> list[np.ndarray]:
    """Per client, indices into the *test* split with the same class counts as the
    client's held-out local test share (``partition.test_indices``), drawn without
    replacement per client (clients may share test images). Local accuracy is then
    scored on images that trained neither a client nor an evaluator. A class with fewer
    test images than asked gives all it has."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    num_classes = partition.class_counts.shape[1]
    by_class = [np.flatnonzero(y_test == c) for c in range(num_classes)]
    out = []
    for k, held in enumerate(partition.test_indices):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        want = np.bincount(y_train[held], minlength=num_classes)
        parts = [rng.choice(by_class[c], size=min(int(n), len(by_class[c])), replace=False)
                 for c, n in enumerate(want) if n > 0]
        out.append(np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64))
    return out


def partition_fingerprint(partition: Partition, local_test: Sequence[np.ndarray] = ()) -> str:
    """Hex digest of every client's index arrays (train, held-out, and local test indices
    into the test split): two runs see the same client data iff these agree."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for group in (partition.train_indices, partition.test_indices, list(local_test)):
        h.update(f"|{len(group)}".encode())
        for a in group:
            a = np.ascontiguousarray(np.asarray(a, np.int64))
            h.update(f"{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- reporting
def label_skew(class_counts: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the
    pooled one (0 = IID, -> 1 = disjoint labels); weighted equally per client."""
    counts = np.asarray(class_counts, dtype=np.float64)
    pooled = counts.sum(axis=0) / counts.sum()
    local = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return float(0.5 * np.abs(local - pooled).sum(axis=1).mean())


def format_partition_table(partition: Partition, class_names: Sequence[str] | None = None) -> str:
    """Clients x classes count table with per-client train/test/total and a totals row."""
    counts = partition.class_counts
    k, c = counts.shape
    heads = [str(i) for i in range(c)]
    train = np.array([len(i) for i in partition.train_indices])
    test = np.array([len(i) for i in partition.test_indices])
    rows = [["client", *heads, "train", "test", "total"]]
    for j in range(k):
        rows.append([str(j), *map(str, counts[j]), str(train[j]), str(test[j]), str(counts[j].sum())])
    rows.append(["total", *map(str, counts.sum(axis=0)), str(train.sum()), str(test.sum()),
                 str(counts.sum())])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if class_names is not None and list(class_names) != heads:
        lines.insert(0, "classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(class_names)))
    return "\n".join(lines)


def plot_partition(partition: Partition, path: str | Path, class_names: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """Stacked bar chart of the local data per client, stacked by class (like Fig. 6)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib as mpl

    counts = partition.class_counts  # (K, C)
    k, c = counts.shape
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    cmap = mpl.colormaps["tab10" if c <= 10 else "tab20" if c <= 20 else "viridis"]
    colors = [cmap(i if c <= 20 else i / max(c - 1, 1)) for i in range(c)]
    fig = Figure(figsize=(max(6.0, 0.6 * k + 3.0), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(k)
    x = np.arange(k)
    for j in range(c):
        ax.bar(x, counts[:, j], bottom=bottom, color=colors[j], label=names[j], width=0.7)
        bottom += counts[:, j]
    ax.set_xticks(x)
    ax.set_ylim(0, max(float(bottom.max()), 1.0) * 1.05)
    ax.set_xlabel("client")
    ax.set_ylabel("number of samples")
    if title is None and partition.alpha is not None:
        title = f"{partition.scheme}, r = {partition.alpha:g}"
    if title:
        ax.set_title(title)
    if c <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
