"""psfl.data.partition: Dirichlet/IID splits, Table I sizes, local test split, CLI."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import psfl.data as D
from psfl.cli import main
from psfl.data.partition import fit_margins, round_margins, top_up
from psfl.utils.errors import PsflError


def labels(n=3000, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, n)


def assert_valid(part: D.Partition, y: np.ndarray, total: int | None = None):
    """Disjoint indices, class_counts consistent with the labels, coverage of ``total``."""
    all_idx = np.concatenate(part.train_indices + part.test_indices)
    assert len(np.unique(all_idx)) == len(all_idx)  # disjoint across clients and splits
    assert len(all_idx) == (len(y) if total is None else total)
    c = part.class_counts.shape[1]
    for k in range(part.num_clients):
        local = np.concatenate([part.train_indices[k], part.test_indices[k]])
        assert (np.bincount(y[local], minlength=c) == part.class_counts[k]).all()


def test_dirichlet_is_deterministic_per_seed():
    y = labels()
    a = D.make_partition(y, num_classes=10, alpha=0.5, seed=3)
    b = D.make_partition(y, num_classes=10, alpha=0.5, seed=3)
    c = D.make_partition(y, num_classes=10, alpha=0.5, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a.train_indices, b.train_indices))
    assert all(np.array_equal(u, v) for u, v in zip(a.test_indices, b.test_indices))
    assert not np.array_equal(a.class_counts, c.class_counts)
    r = D.make_partition(y, num_classes=10, alpha=0.5, rng=np.random.default_rng(3))
    assert np.array_equal(r.class_counts, a.class_counts)  # seed == default_rng(seed)


@pytest.mark.parametrize("scheme, sizes", [("dirichlet", None), ("dirichlet", "table1"),
                                           ("iid", None), ("iid", [100, 200, 300, 400, 500, 600, 50, 50, 50])])
def test_disjoint_and_complete(scheme, sizes):
    y = labels()
    part = D.make_partition(y, num_classes=10, scheme=scheme, sizes=sizes, seed=1)
    total = None if sizes is None or sizes == "table1" else sum(sizes)
    assert_valid(part, y, total)
    if total is not None:
        assert part.sizes.tolist() == sizes


def test_local_test_split():
    y = labels()
    part = D.make_partition(y, num_classes=10, num_clients=5, local_test_fraction=0.25, seed=0)
    for tr, te in zip(part.train_indices, part.test_indices):
        assert len(te) == round(0.25 * (len(tr) + len(te)))
        assert np.all(np.diff(tr) > 0) and not np.intersect1d(tr, te).size
    none = D.make_partition(y, num_classes=10, num_clients=5, local_test_fraction=0.0, seed=0)
    assert all(len(te) == 0 for te in none.test_indices)
    tc = part.train_class_counts(y)
    assert tc.sum() == sum(len(t) for t in part.train_indices) and (tc <= part.class_counts).all()


def test_minimum_size_is_guaranteed():
    y = labels(300)
    for seed in range(5):  # alpha 0.05 on 20 clients leaves many clients nearly empty
        part = D.make_partition(y, num_classes=10, num_clients=20, alpha=0.05, min_size=12, seed=seed)
        assert part.sizes.min() >= 12
        assert_valid(part, y)
    # min_size * K == N: the repair must reach exactly N / K each.
    part = D.make_partition(y, num_classes=10, num_clients=10, alpha=0.05, min_size=30, seed=0)
    assert part.sizes.tolist() == [30] * 10


def test_top_up_moves_from_the_largest_client():
    counts = np.array([[50, 0, 0], [30, 0, 2]])  # (C=2, K=3): client 0 holds almost everything
    fixed = top_up(counts, 10)
    assert fixed.sum(axis=0).tolist() == [62, 10, 10]
    assert (fixed.sum(axis=1) == counts.sum(axis=1)).all() and (fixed >= 0).all()


def test_sizes_are_honoured():
    y = labels(6000)
    sizes = [100, 500, 1000, 50, 2000, 700]
    part = D.make_partition(y, num_classes=10, num_clients=6, alpha=0.3, sizes=sizes, seed=2)
    assert part.sizes.tolist() == sizes
    assert_valid(part, y, sum(sizes))
    t1 = D.make_partition(y, num_classes=10, alpha=0.9, sizes="table1", seed=2)
    exact = np.array(D.TABLE1_VOLUMES) * 6000 / 50000
    assert np.abs(t1.sizes - exact).max() < 1 and t1.sizes.sum() == 6000
    assert D.make_partition(y, num_classes=10, num_clients=3, sizes="10,20,30").sizes.tolist() == [10, 20, 30]
    half = labels(600, c=5)  # classes 5..9 absent: they stay empty
    p = D.make_partition(half, num_classes=10, num_clients=4, alpha=0.2, sizes=[100, 100, 150, 250], seed=0)
    assert p.sizes.tolist() == [100, 100, 150, 250] and p.class_counts[:, 5:].sum() == 0
    assert_valid(p, half, 600)


def test_table1_sizes():
    assert D.table1_sizes(50000) == list(D.TABLE1_VOLUMES)
    s = D.table1_sizes(42000)
    assert sum(s) == 42000 and s == sorted(s)
    three = D.table1_sizes(50000, k=3)  # profile at clients 0, 4, 8
    assert sum(three) == 50000
    np.testing.assert_allclose(three, np.array([1854, 5467, 9281]) * 50000 / 16602, atol=1)
    assert D.table1_sizes(9, k=9) == [1] * 9


def mean_skew(scheme, alpha, sizes, seeds=range(4)):
    y = labels(4000)
    return np.mean([D.label_skew(D.make_partition(y, num_classes=10, scheme=scheme, alpha=alpha,
                                                  sizes=sizes, seed=s).class_counts) for s in seeds])


@pytest.mark.parametrize("sizes", [None, "table1"])
def test_small_alpha_means_more_label_skew(sizes):
    s01, s09, s100 = (mean_skew("dirichlet", a, sizes) for a in (0.1, 0.9, 100.0))
    assert s01 > s09 + 0.15 and s09 > s100 + 0.15
    assert s100 < 0.1


def test_iid_is_balanced():
    y = labels(9000)
    part = D.make_partition(y, num_classes=10, scheme="iid", seed=0)
    assert part.sizes.max() - part.sizes.min() <= 1
    assert D.label_skew(part.class_counts) < 0.06
    assert mean_skew("iid", 0.01, None) < 0.06  # alpha does not matter for iid


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 10**6), st.floats(0.01, 10))
def test_round_margins_meets_both_margins(c, k, seed, alpha):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 50, c)
    if rows.sum() == 0:
        rows[0] = 1
    cols = np.bincount(rng.integers(0, k, rows.sum()), minlength=k)
    seed_m = rng.dirichlet(np.full(k, alpha), size=c)
    n = round_margins(fit_margins(seed_m, rows, cols), rows, cols)
    assert (n >= 0).all()
    assert (n.sum(axis=1) == rows).all() and (n.sum(axis=0) == cols).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0.0}, r"must be > 0, got 0"),
    ({"alpha": -1.0}, r"must be > 0"),
    ({"num_clients": 0}, r"number of clients must be >= 1"),
    ({"num_clients": 101}, r"more clients \(101\) than training samples \(100\)"),
    ({"num_clients": 2, "sizes": [60, 50]}, r"sizes sum to 110, more than the 100"),
    ({"num_clients": 3, "sizes": [10, 20]}, r"sizes has 2 entries for 3 clients"),
    ({"num_clients": 2, "sizes": "a,b"}, r"comma-separated integers"),
    ({"num_clients": 2, "sizes": [5, 20], "min_size": 10}, r"at least 10 samples"),
    ({"num_clients": 9, "min_size": 20}, r"min_size 20 x 9 clients exceeds the 100 samples"),
    ({"local_test_fraction": 1.0}, r"local_test_fraction must be in \[0, 1\)"),
    ({"scheme": "pathological"}, r"unknown partition scheme 'pathological'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(PsflError, match=message):
        D.make_partition(labels(100), num_classes=10, **kwargs)


def test_cli_prints_table_and_writes_png(tmp_path, capsys):
    png = tmp_path / "fig6.png"
    assert main(["partition", "--clients", "4", "-r", "0.3", "--sizes", "none", "--seed", "1",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("client"))
    assert header.split()[:11] == ["client", *map(str, range(10))]
    rows = [line.split() for line in lines if line.split() and line.split()[0] in {"0", "1", "2", "3"}]
    assert len(rows) == 4
    total = next(line.split() for line in lines if line.startswith(" total") or line.startswith("total"))
    assert total[-1] == "5700"  # bundled sample: every training sample is placed
    assert sum(int(r[-1]) for r in rows) == 5700
    assert "label skew" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_error_is_one_line(capsys):
    assert main(["partition", "--dataset", "cifar10", "--source", "bundled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("psfl partition: error: no bundled sample for cifar10") and "Traceback" not in err
