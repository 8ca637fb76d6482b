"""psfl.data: loading and validation, bundled sample, preprocessing, batches, client views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import psfl.data as D
from psfl.data import INPUT_PRESETS, InputSpec
from psfl.utils.errors import PsflError


def fake_arrays(name: str = "fashion_mnist", n_train: int = 40, n_test: int = 20, seed: int = 0):
    info = D.DATASETS.get(name)
    rng = np.random.default_rng(seed)
    shape = (info.size, info.size) if info.channels == 1 else (info.size, info.size, info.channels)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % info.num_classes).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % info.num_classes).astype(np.uint8),
    }


def write_npz(tmp_path, name="fashion_mnist", **changes):
    arrays = fake_arrays(name)
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / D.DATASETS.get(name).npz_file, **arrays)
    return arrays


# --------------------------------------------------------------------------- loading
def test_registry_facts():
    assert D.DATASETS.names() == ["cifar10", "cifar100", "fashion_mnist", "mnist"]
    c100 = D.DATASETS.get("cifar100")
    assert (c100.num_classes, c100.size, c100.channels, c100.torchvision_class) == (100, 32, 3, "CIFAR100")
    assert set(D.SOURCES.names()) == {"auto", "npz", "bundled", "torchvision"}


def test_npz_loads_and_is_read_only(tmp_path):
    arrays = write_npz(tmp_path)
    ds = D.load_dataset("fashion_mnist", source="npz", data_dir=tmp_path)
    assert ds.x_train.shape == (40, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.x_test, arrays["x_test"])
    assert "npz" in ds.source and not ds.x_train.flags.writeable
    assert D.load_dataset("fashion_mnist", source="auto", data_dir=tmp_path) is ds  # memoised


def test_keras_cifar_labels_and_channel_axis(tmp_path):
    a = fake_arrays("cifar10")
    a["y_train"] = a["y_train"][:, None]  # Keras CIFAR layout (N, 1)
    np.savez(tmp_path / "cifar10.npz", **a)
    ds = D.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (40, 32, 32, 3) and ds.y_train.shape == (40,)
    g = fake_arrays("mnist")
    g["x_train"] = g["x_train"][..., None]  # (N, 28, 28, 1) is accepted for grey data
    np.savez(tmp_path / "mnist.npz", **g)
    assert D.load_dataset("mnist", source="npz", data_dir=tmp_path).x_train.shape == (40, 28, 28)


@pytest.mark.parametrize("changes, message", [
    ({"y_test": None, "x_test": None}, r"missing keys x_test, y_test"),
    ({"x_train": np.zeros((40, 28, 28), np.float32)}, r"x_train has dtype float32, expected uint8"),
    ({"x_train": np.zeros((40, 32, 32, 3), np.uint8)}, r"x_train has shape \(40, 32, 32, 3\), expected \(N, 28, 28\)"),
    ({"x_test": np.zeros((5, 28), np.uint8)}, r"x_test has shape \(5, 28\)"),
    ({"y_train": np.zeros(39, np.uint8)}, r"x_train has 40 images but y_train has 39 labels"),
    ({"y_test": np.full(20, 10, np.uint8)}, r"y_test has labels outside \[0, 10\) \(min 10, max 10\)"),
    ({"y_train": np.full(40, -1, np.int16)}, r"y_train has labels outside \[0, 10\)"),
    ({"y_train": np.zeros(40, np.float32)}, r"y_train has dtype float32, expected integer"),
    ({"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.uint8)}, r"x_train holds no images"),
])
def test_bad_npz_gives_one_clear_error(tmp_path, changes, message):
    write_npz(tmp_path, **changes)
    with pytest.raises(PsflError, match=message) as err:
        D.load_dataset("fashion_mnist", source="npz", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value)  # names the file


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PsflError, match=r"dataset file not found: .*mnist\.npz"):
        D.load_dataset("mnist", source="npz", data_dir=tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(PsflError, match=r"cannot read .*mnist\.npz"):
        D.load_dataset("mnist", source="npz", data_dir=tmp_path)
    with open(tmp_path / "mnist.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(PsflError, match=r"mnist\.npz holds a single array, not an npz archive"):
        D.load_dataset("mnist", source="npz", data_dir=tmp_path)
    with pytest.raises(PsflError, match="needs a data directory"):
        D.load_dataset("mnist", source="npz")


def test_auto_source_and_unknown_names(tmp_path):
    assert "bundled" in D.load_dataset("fashion_mnist").source
    # An explicit data directory never falls back to the bundled sample.
    with pytest.raises(PsflError, match=r"no data for fashion_mnist: .*fashion_mnist\.npz not found"):
        D.load_dataset("fashion_mnist", data_dir=tmp_path)
    with pytest.raises(PsflError, match=r"no data for cifar10: .*cifar10\.npz not found.*--data-dir.*torchvision"):
        D.load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(PsflError, match="no data directory given"):
        D.load_dataset("cifar10")
    with pytest.raises(PsflError, match="no bundled sample for mnist"):
        D.load_dataset("mnist", source="bundled")
    with pytest.raises(PsflError, match="unknown dataset 'imagenet'"):
        D.load_dataset("imagenet")
    with pytest.raises(PsflError, match="unknown data source 'web'"):
        D.load_dataset("mnist", source="web")


def test_bundled_sample_is_stratified():
    ds = D.load_dataset("fashion_mnist", source="bundled")
    assert ds.x_train.shape == (5700, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert (np.bincount(ds.y_train, minlength=10) == 570).all()
    assert (np.bincount(ds.y_test, minlength=10) == 100).all()
    assert 40 < ds.x_train.mean() < 120  # real images, not blank
    from psfl.data.datasets import bundled_path
    assert bundled_path(ds.info).stat().st_size <= 3_000_000


class _FakeTorchvision:
    """Stands in for a torchvision dataset class: ``.data`` / ``.targets`` like the real ones."""

    calls: list = []

    def __init__(self, root, train, download):
        type(self).calls.append((root, train, download))
        n = 12 if train else 6
        a = fake_arrays(self.dataset, n, n)
        x, y = (a["x_train"], a["y_train"]) if train else (a["x_test"], a["y_test"])
        self.data, self.targets = self.wrap(x, y)


def test_torchvision_source_converts(monkeypatch, tmp_path):
    import torchvision.datasets as tvd

    class FakeMNIST(_FakeTorchvision):  # MNIST: uint8 tensor data, tensor targets
        dataset, calls = "mnist", []
        wrap = staticmethod(lambda x, y: (torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))))

    class FakeCIFAR10(_FakeTorchvision):  # CIFAR: numpy HWC data, list targets
        dataset, calls = "cifar10", []
        wrap = staticmethod(lambda x, y: (x, [int(v) for v in y]))

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    m = D.load_dataset("mnist", source="torchvision", data_dir=tmp_path)
    assert m.x_train.shape == (12, 28, 28) and m.x_test.shape == (6, 28, 28) and m.y_train.dtype == np.int64
    assert FakeMNIST.calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    c = D.load_dataset("cifar10", source="torchvision", data_dir=tmp_path)
    assert c.x_train.shape == (12, 32, 32, 3) and list(c.y_test) == list(range(6))
    assert "torchvision CIFAR10" in c.source

    class Offline:
        def __init__(self, **kw):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(tvd, "FashionMNIST", Offline)
    with pytest.raises(PsflError, match="torchvision could not provide FashionMNIST .*Error downloading"):
        D.load_dataset("fashion_mnist", source="torchvision", data_dir=tmp_path)


# --------------------------------------------------------------------------- preprocessing
def tiny_dataset(name="fashion_mnist", n=6, seed=1) -> D.ArrayDataset:
    a = D.validate_arrays(D.DATASETS.get(name), fake_arrays(name, n, n, seed), "test")
    return D.ArrayDataset(name, a["x_train"], a["y_train"], a["x_test"], a["y_test"], 10, "test")


def test_prepare_native_is_pixels_in_unit_range():
    ds = tiny_dataset()
    p = D.prepare(ds, INPUT_PRESETS.get("native"))
    assert p.x_train.shape == (6, 1, 28, 28) and p.x_train.dtype == torch.float32
    assert p.y_train.dtype == torch.int64 and p.y_train.tolist() == ds.y_train.tolist()
    torch.testing.assert_close(p.x_train[:, 0], torch.from_numpy(ds.x_train.astype(np.float32) / 255))
    assert p.input.size == 28 and p.input.channels == 1
    assert D.prepare(ds, "native") is p  # in-memory cache
    rgb = tiny_dataset("cifar10", n=4)
    q = D.prepare(rgb, "native")  # HWC uint8 -> CHW float, channel order kept
    assert q.x_train.shape == (4, 3, 32, 32)
    torch.testing.assert_close(q.x_train, torch.from_numpy(rgb.x_train / 255.0).float().permute(0, 3, 1, 2))


def test_prepare_normalises_and_converts_grey_to_rgb():
    ds = tiny_dataset()
    spec = InputSpec("t3", None, 3, (0.5, 0.4, 0.3), (0.25, 0.5, 1.0))
    p = D.prepare(ds, spec)
    assert p.x_test.shape == (6, 3, 28, 28)
    pix = torch.from_numpy(ds.x_test.astype(np.float32) / 255)
    for c, (m, s) in enumerate(zip(spec.mean, spec.std)):
        torch.testing.assert_close(p.x_test[:, c], (pix - m) / s)
    torch.testing.assert_close(D.denormalize(p.x_test, p.input), pix[:, None].expand(-1, 3, -1, -1))


def test_prepare_imagenet224_resizes_colour_and_grey():
    ds = tiny_dataset("cifar10", n=3)
    p = D.prepare(ds, "imagenet224")
    assert p.x_train.shape == (3, 3, 224, 224)
    back = D.denormalize(p.x_train, p.input)
    assert back.min() >= 0 and back.max() <= 1
    # Upsampling keeps the per-image channel means (bilinear is a local average).
    ref = torch.from_numpy(ds.x_train.astype(np.float32) / 255).permute(0, 3, 1, 2).mean(dim=(2, 3))
    torch.testing.assert_close(back.mean(dim=(2, 3)), ref, atol=0.01, rtol=0)
    # A flat grey image stays flat and grey at 224 x 224 RGB.
    flat = D.ArrayDataset("mnist", np.full((2, 28, 28), 128, np.uint8), np.zeros(2, np.int64),
                          np.full((1, 28, 28), 128, np.uint8), np.zeros(1, np.int64), 10, "flat")
    q = D.prepare(flat, "imagenet224")
    torch.testing.assert_close(D.denormalize(q.x_test, q.input), torch.full((1, 3, 224, 224), 128 / 255))


def test_downsampling_is_antialiased():
    # A one-pixel checkerboard shrunk 2x must come out flat grey, not aliased stripes.
    board = ((np.indices((28, 28)).sum(axis=0) % 2) * 255).astype(np.uint8)[None]
    ds = D.ArrayDataset("mnist", board, np.zeros(1, np.int64), board, np.zeros(1, np.int64), 10, "b")
    p = D.prepare(ds, InputSpec("half", 14, 1, (0.0,), (1.0,)))
    assert p.x_train.shape == (1, 1, 14, 14)
    assert float(p.x_train.std()) < 0.05 and abs(float(p.x_train.mean()) - 0.5) < 0.02


def test_disk_cache_round_trip(tmp_path):
    ds = tiny_dataset(seed=3)
    p = D.prepare(ds, "native", cache_dir=tmp_path)
    files = list(tmp_path.glob("fashion_mnist-native-*.pt"))
    assert len(files) == 1
    D.clear_prepare_cache()
    q = D.prepare(ds, "native", cache_dir=tmp_path)
    assert q is not p
    torch.testing.assert_close(q.x_train, p.x_train)
    torch.testing.assert_close(q.y_test, p.y_test)
    other = tiny_dataset(seed=4)  # different arrays -> different cache file
    D.prepare(other, "native", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_unknown_preset():
    with pytest.raises(PsflError, match="unknown input preset 'huge'"):
        D.prepare(tiny_dataset(), "huge")


# --------------------------------------------------------------------------- batches and clients
@pytest.mark.parametrize("n, bs, drop_last", [(10, 3, False), (10, 3, True), (9, 3, False), (2, 5, False)])
def test_iterate_batches_covers_each_sample_once(n, bs, drop_last):
    x = torch.arange(n, dtype=torch.float32)[:, None] * torch.ones(1, 4)
    y = torch.arange(n)
    g = torch.Generator().manual_seed(0)
    seen = []
    for xb, yb in D.iterate_batches(x, y, bs, g, drop_last=drop_last):
        assert xb.shape[0] == yb.shape[0] <= bs
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay paired
        seen += yb.tolist()
    full = n - n % bs if drop_last else n
    assert len(seen) == full and len(set(seen)) == full
    if not drop_last:
        assert sorted(seen) == list(range(n))
    ordered = [yb.tolist() for _, yb in D.iterate_batches(x, y, bs, shuffle=False)]
    assert sum(ordered, []) == list(range(n))


def test_iterate_batches_is_seeded():
    x, y = torch.randn(50, 2), torch.arange(50)
    a = [yb for _, yb in D.iterate_batches(x, y, 8, torch.Generator().manual_seed(5))]
    b = [yb for _, yb in D.iterate_batches(x, y, 8, torch.Generator().manual_seed(5))]
    c = [yb for _, yb in D.iterate_batches(x, y, 8, torch.Generator().manual_seed(6))]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    with pytest.raises(PsflError, match="batch_size"):
        next(D.iterate_batches(x, y, 0, torch.Generator()))


def test_client_datasets_gather_the_partition():
    ds = tiny_dataset(n=60, seed=7)
    p = D.prepare(ds, "native")
    part = D.make_partition(ds.y_train, num_classes=10, num_clients=3, alpha=0.5, min_size=5, seed=0)
    clients = D.client_datasets(p, part)
    assert [len(c) for c in clients] == [len(i) for i in part.train_indices]
    for c, tr, te in zip(clients, part.train_indices, part.test_indices):
        torch.testing.assert_close(c.x, p.x_train[torch.from_numpy(tr)])
        assert c.y.tolist() == ds.y_train[tr].tolist() and c.y_test.tolist() == ds.y_train[te].tolist()
        assert c.x_test.shape == (len(te), 1, 28, 28)


def test_validation_view_holds_out_training_images_per_class_and_drops_the_test_split():
    """Tuning data: held-out training images replace the test split, per class in
    proportion, disjoint from the remaining training images; no test image is left."""
    ds = D.load_dataset("fashion_mnist", source="bundled")
    v = D.validation_view(ds, 570)
    assert v.x_test.shape[0] == 570 and v.x_train.shape[0] == ds.x_train.shape[0] - 570
    want = 570 * np.bincount(ds.y_train, minlength=10) / ds.y_train.shape[0]
    assert np.abs(np.bincount(v.y_test, minlength=10) - want).max() <= 1
    rows = lambda x: {a.tobytes() for a in x}  # noqa: E731
    assert rows(v.x_test) | rows(v.x_train) == rows(ds.x_train) and not rows(v.x_test) & rows(v.x_train)
    assert not rows(v.x_test) & rows(ds.x_test) and not rows(v.x_train) & rows(ds.x_test)
    assert v.fingerprint() != ds.fingerprint() and "validation view" in v.source
    assert D.validation_view(ds, 570).fingerprint() == v.fingerprint()  # the same split every time
    with pytest.raises(PsflError, match="validation_samples"):
        D.validation_view(ds, ds.x_train.shape[0])
