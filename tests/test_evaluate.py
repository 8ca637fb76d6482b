"""Evaluator (frozen classifier) training, cache round trip, freezing, and the
reconstruction metrics of Section V-B."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from psfl.data import ArrayDataset
from psfl.utils.errors import PsflError
from psfl.evaluate import (
    CLASSIFIERS, FrozenClassifier, classifier_accuracy, create_classifier, evaluate_reconstruction,
    fit_classifier, freeze, list_evaluators, load_classifier_checkpoint, load_evaluator, train_evaluator,
)


def separable_arrays(n: int, seed: int, size: int = 28, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class c is a bright square in quadrant c, on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 90, (n, size, size)).astype(np.uint8)
    h = size // 2
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, r * h + 3:r * h + h - 3, q * h + 3:q * h + h - 3] = 230
    return x, y.astype(np.int64)


def synthetic_dataset(n_train: int = 512, n_test: int = 128) -> ArrayDataset:
    xtr, ytr = separable_arrays(n_train, 0)
    xte, yte = separable_arrays(n_test, 1)
    # the name fixes native size/channels (28 px grey); content is synthetic
    return ArrayDataset("fashion_mnist", xtr, ytr, xte, yte, num_classes=10, source="synthetic")


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x).float().div(255).unsqueeze(1), torch.from_numpy(y)


@pytest.mark.parametrize("arch", CLASSIFIERS.names())
@pytest.mark.parametrize("size,chans", [(28, 1), (32, 3), (96, 3)])
def test_classifier_shapes(arch, size, chans):
    if arch == "resnet101" and size != 32:
        pytest.skip("slow to build; the 32 px case covers it")
    net = create_classifier(arch, chans, 7, size).eval()
    assert net(torch.rand(2, chans, size, size)).shape == (2, 7)


def test_cnn_learns_separable_set():
    x, y = as_tensors(*separable_arrays(512, 0))
    xt, yt = as_tensors(*separable_arrays(256, 1))
    torch.manual_seed(0)
    net = create_classifier("cnn", 1, 4, 28)
    assert classifier_accuracy(net, xt, yt) < 0.6
    hist = fit_classifier(net, x, y, epochs=2, batch_size=32, lr=3e-3, generator=torch.Generator().manual_seed(0),
                          progress=False)
    assert len(hist) == 2 and hist[-1]["samples_per_s"] > 0
    assert classifier_accuracy(net, xt, yt) > 0.9  # chance is 0.25


def test_frozen_classifier_passes_gradients_but_gets_none():
    ev = freeze(create_classifier("cnn", 1, 4, 28))
    ev.train()  # a no-op: stays in eval mode
    assert not ev.training and all(not m.training for m in ev.modules())
    assert all(not p.requires_grad for p in ev.parameters())
    sc = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))  # stand-in for an SC model
    x = torch.rand(4, 1, 28, 28)
    logits = ev(sc(x))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None for p in ev.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sc.parameters())


def test_train_evaluator_cache_round_trip(tmp_path, capsys):
    ds = synthetic_dataset()
    ev = train_evaluator("fashion_mnist", input_preset="native", arch="cnn", epochs=2, batch_size=32,
                         cache_dir=tmp_path, progress=False, dataset_obj=ds)
    assert isinstance(ev, FrozenClassifier) and not ev.training
    info = ev.info
    assert info.test_accuracy > 0.9 and info.img_size == 28 and info.in_chans == 1
    assert info.fingerprint == ds.fingerprint()[:16] and info.device.startswith("cpu")
    listed = list_evaluators(tmp_path)
    assert len(listed) == 1 and listed[0].path == info.path and listed[0].test_accuracy == info.test_accuracy
    again = load_classifier_checkpoint(info.path)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(ev(x), again(x)) and again.info.arch == "cnn"


def test_load_evaluator_uses_cache_or_refuses(tmp_path, monkeypatch):
    ds = synthetic_dataset(64, 32)
    monkeypatch.setattr("psfl.evaluate.evaluator._load", lambda *a: ds)
    with pytest.raises(PsflError, match="psfl evaluator train"):
        load_evaluator("fashion_mnist", cache_dir=tmp_path, train_if_missing=False)
    ev = load_evaluator("fashion_mnist", epochs=1, cache_dir=tmp_path, progress=False)  # trains (message)
    again = load_evaluator("fashion_mnist", epochs=1, cache_dir=tmp_path, train_if_missing=False)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(ev(x), again(x))
    # Every setting that changes the weights is part of the cache key: no stale hit.
    for other in ({"epochs": 2}, {"epochs": 1, "seed": 1}, {"epochs": 1, "arch": "lenet"}):
        with pytest.raises(PsflError, match="psfl evaluator train"):
            load_evaluator("fashion_mnist", cache_dir=tmp_path, train_if_missing=False, **other)


def test_a_second_process_waits_for_the_evaluator_the_first_trains(tmp_path, monkeypatch, capsys):
    import shutil
    import threading
    import time

    from psfl.utils.lock import wait_lock

    ds = synthetic_dataset(64, 32)
    monkeypatch.setattr("psfl.evaluate.evaluator._load", lambda *a: ds)
    made = Path(load_evaluator("fashion_mnist", epochs=1, cache_dir=tmp_path / "a", progress=False).info.path)
    other = tmp_path / "b"
    other.mkdir()
    capsys.readouterr()
    got: list = []
    # "another process" trains it into b: its lock is held, so the loader must wait, then
    # read the file that appeared (flock locks open files, so a thread stands in for a process)
    with wait_lock(other / (made.name + ".lock")):
        t = threading.Thread(target=lambda: got.append(load_evaluator("fashion_mnist", epochs=1, cache_dir=other,
                                                                      progress=False)))
        t.start()
        time.sleep(0.5)
        for f in made.parent.glob(made.stem + ".*"):
            shutil.copy(f, other / f.name)
    t.join(60)
    err = capsys.readouterr().err
    assert got and "waiting for" in err and "training one" not in err
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(got[0](x), load_classifier_checkpoint(made)(x))
    assert sorted(f.name for f in other.iterdir()) == sorted(f.name for f in made.parent.iterdir())  # no lock left


def test_user_checkpoint_formats(tmp_path):
    net = create_classifier("cnn", 1, 10, 28)
    torch.save({"arch": "cnn", "state_dict": net.state_dict(), "num_classes": 10, "in_chans": 1, "img_size": 28},
               tmp_path / "full.pt")
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    x = torch.rand(2, 1, 28, 28)
    ref = net.eval()(x)
    assert torch.allclose(load_classifier_checkpoint(tmp_path / "full.pt")(x), ref)
    assert torch.allclose(load_classifier_checkpoint(tmp_path / "bare.pt", "cnn", 10, 1, 28)(x), ref)
    with pytest.raises(PsflError, match="does not say arch"):
        load_classifier_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(PsflError, match="does not fit"):
        load_classifier_checkpoint(tmp_path / "bare.pt", "resnet18", 10, 1, 28)
    with pytest.raises(PsflError, match="does not exist"):
        load_classifier_checkpoint(tmp_path / "nope.pt")


class IdentityCodec(nn.Module):
    """SC stand-in: the image itself crosses the channel (x_hat = Y rescaled), so the
    reconstruction quality is set by the SNR alone."""

    def __init__(self, channel: str = "awgn") -> None:
        super().__init__()
        from psfl.channel import create_channel

        self.channel = create_channel(channel)

    def forward(self, x, snr_db, generator=None, mask_ratio=0.0):
        from psfl.models.base import SCOutput

        z = x.flatten(1).unsqueeze(1)  # (B, 1, C*H*W)
        rms = z.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
        X, Y = self.channel(z, snr_db, generator)
        x_hat = (Y * rms).view_as(x)
        return SCOutput(S=z, X=X, Y=Y, C=Y, x_hat=x_hat, grid=(1, 1))


def test_evaluate_reconstruction_quality_rises_with_snr():
    x, y = as_tensors(*separable_arrays(64, 2))
    ev = freeze(create_classifier("cnn", 1, 4, 28))
    rows = [evaluate_reconstruction(IdentityCodec(), ev, x, y, snr, generator=torch.Generator().manual_seed(0),
                                    batch_size=24) for snr in (0.0, 10.0, 20.0, 40.0)]
    for r in rows:
        assert set(r) == {"accuracy", "psnr", "ssim", "mse", "ce", "loss"}
        assert 0 <= r["accuracy"] <= 1 and -1 <= r["ssim"] <= 1 and r["mse"] >= 0
        assert r["loss"] >= r["ce"]
    psnr, ssim = [r["psnr"] for r in rows], [r["ssim"] for r in rows]
    assert psnr == sorted(psnr) and ssim == sorted(ssim) and psnr[-1] > 35 and ssim[-1] > 0.99
    assert rows[-1]["psnr"] == pytest.approx(-10 * np.log10(rows[-1]["mse"]), abs=0.5)  # near-uniform error


def test_evaluate_reconstruction_denormalises_and_swaps_channel():
    from psfl.channel import create_channel
    from psfl.data import ResolvedInput

    x, y = as_tensors(*separable_arrays(16, 3))
    res = ResolvedInput("custom", 28, 1, (0.5,), (0.25,))
    xn = (x - 0.5) / 0.25  # model space
    ev = freeze(create_classifier("cnn", 1, 4, 28))
    model = IdentityCodec()
    r = evaluate_reconstruction(model, ev, xn, y, 60.0, generator=torch.Generator().manual_seed(0), input=res)
    assert r["psnr"] > 50
    own = model.channel
    r2 = evaluate_reconstruction(model, ev, xn, y, 10.0, channel=create_channel("rayleigh"),
                                 generator=torch.Generator().manual_seed(0), input=res)
    assert model.channel is own and r2["psnr"] < r["psnr"]


def test_transmit_writes_png(tmp_path, monkeypatch):
    from PIL import Image

    from psfl import data as D
    from psfl.evaluate.transmit import transmit_checkpoint
    from psfl.models import create_model, save_model_checkpoint

    ds = synthetic_dataset(64, 16)
    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: ds)
    model = create_model("tiny-CSC", img_size=28, in_chans=1)
    ckpt = save_model_checkpoint(model, tmp_path / "model.pt", {"dataset": "fashion_mnist", "input_preset": "native"})
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "photo.jpg")
    r, png = transmit_checkpoint(ckpt, 10.0, tmp_path / "grid.png", dataset="fashion_mnist", indices=[0, 3],
                                 images=[tmp_path / "photo.jpg"], evaluator_cache_dir=str(tmp_path / "cache"),
                                 progress=False)
    assert png.is_file() and len(r.psnr) == 3 and r.labels[:2] == [int(ds.y_test[0]), int(ds.y_test[3])]
    assert r.labels[2] is None and all(0 <= k < 10 for k in r.predicted)
    with Image.open(png) as im:
        assert im.width > im.height / 3 * 2 * 0.9  # 2 columns, 3 rows
        assert im.height >= 3 * 96
    with pytest.raises(PsflError, match="out of range"):
        transmit_checkpoint(ckpt, 10.0, tmp_path / "g.png", dataset="fashion_mnist", indices=[999],
                            evaluator_cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(PsflError, match="does not exist"):
        transmit_checkpoint(ckpt, 10.0, tmp_path / "g.png", images=[tmp_path / "nope.png"],
                            evaluator_cache_dir=str(tmp_path / "cache"), progress=False)


def test_kept_evaluators_seed_a_fresh_cache_and_refuse_other_weights(tmp_path):
    """`results/evaluators` carries a machine's classifiers to the next one: a fresh cache
    gets the exact bytes; a cache that holds other weights under the same name is refused;
    keeping copies only files whose weights still have the digest a run recorded."""
    from psfl.evaluate.classifiers import create_classifier
    from psfl.evaluate.evaluator import (EvaluatorInfo, _save, keep_evaluators, load_classifier_checkpoint,
                                         seed_cache)
    from psfl.models.checkpoints import state_digest

    def make(path, seed):
        torch.manual_seed(seed)
        info = EvaluatorInfo("lenet", "mnist", "npz", "f" * 16, "native", 28, 1, 10, 1, seed, 0.5, 1.0)
        _save(create_classifier("lenet", 1, 10, 28), info, path)
        return state_digest(load_classifier_checkpoint(path).state_dict())

    name = "mnist__native__lenet__e1__s0__ffffffffffffffff__x.pt"
    cache_a, kept, cache_b = tmp_path / "a", tmp_path / "kept", tmp_path / "b"
    digest = make(cache_a / name, 0)
    assert keep_evaluators({str(cache_a / name): digest}, kept) == ([name], [])
    assert (kept / name).read_bytes() == (cache_a / name).read_bytes() and (kept / name).with_suffix(".json").is_file()
    assert keep_evaluators({str(cache_a / name): digest}, kept) == ([], [])  # already kept
    assert seed_cache(kept, cache_b) == [name] and (cache_b / name).read_bytes() == (kept / name).read_bytes()
    assert seed_cache(kept, cache_b) == []
    make(cache_b / name, 1)  # another machine trained other weights under the same name
    with pytest.raises(PsflError, match="differs from"):
        seed_cache(kept, cache_b)
    copied, notes = keep_evaluators({str(cache_b / name): digest}, tmp_path / "kept2")
    assert copied == [] and "other weights" in notes[0] and not (tmp_path / "kept2").exists()


def test_pixel_variance_is_the_unbiased_variance_on_any_thread_count():
    """The scale of ``mse_space = "standardized"`` (every loss's MSE term): the unbiased
    variance of the [0, 1] pixels (an independent float64 two-pass computation), and the
    same bits on 1, 2 and 4 torch threads. torch's own ``var`` splits the sum by thread
    count (three different last bits for this tensor), so a run and its Flower twin on
    fewer threads reported different losses."""
    from psfl.evaluate.baselines import pixel_variance

    x = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    flat = x.double().flatten().tolist()
    mean = sum(flat) / len(flat)
    expected = sum((v - mean) ** 2 for v in flat) / (len(flat) - 1)
    was, got = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            got.append(pixel_variance(x))
    finally:
        torch.set_num_threads(was)
    assert len(set(got)) == 1, got
    assert got[0] == pytest.approx(expected, rel=1e-12)


def test_accuracy_baselines_and_the_chance_bound_equal_a_hand_computation():
    """One class for every image scores the most frequent class's share (here class 2:
    5 of 8 labels, counted by hand), guessing 1/C; the bound adds 3 binomial sd."""
    from psfl.evaluate.baselines import accuracy_baselines, chance_bound

    labels = np.array([2, 0, 2, 2, 1, 2, 3, 2])
    assert accuracy_baselines(labels, 5) == {"majority_class": 5 / 8, "uniform": 0.2}
    assert accuracy_baselines(torch.tensor([[4], [4]]), 5)["majority_class"] == 1.0  # any shape, a tensor
    # p = 0.112 on 1000 images: 0.112 + 3 * sqrt(0.112 * 0.888 / 1000) = 0.112 + 3 * 0.009973
    assert chance_bound(0.112, 1000) == pytest.approx(0.141919, abs=1e-6)
    assert chance_bound(0.5, 100, sds=2) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        chance_bound(0.1, 0)


def test_trivial_baselines_equal_a_hand_computation_and_are_computed_once_per_split():
    """Per-image PSNR of the constant, dataset-mean and class-mean reconstructions, averaged
    (numpy float64, written out here), on [0, 1] images; and the training statistics of a
    prepared split are made once, then shared by every run that uses the split, as are the
    baselines of each test subset (another subset gets its own)."""
    from psfl.data.preprocess import PreparedData
    from psfl.evaluate.baselines import baselines_of, statistics_of, train_statistics, trivial_baselines

    g = torch.Generator().manual_seed(3)
    x_train, y_train = torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 3
    x_train[y_train == 1] *= 0.5  # classes with different means
    x_test, y_test = torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 1, 0, 2])
    xt, xs = x_train.double().numpy(), x_test.double().numpy()
    cls = np.stack([xt[y_train.numpy() == k].mean(0) for k in range(3)])

    def psnr(pred):
        mse = ((pred - xs) ** 2).reshape(len(xs), -1).mean(1)
        return float(np.mean(10 * np.log10(1 / mse)))

    stats = train_statistics(x_train, y_train, 3)
    got = trivial_baselines(stats, x_test, y_test)
    assert got["constant"]["psnr"] == pytest.approx(psnr(np.full_like(xs, xt.mean())), abs=1e-4)
    assert got["dataset_mean"]["psnr"] == pytest.approx(psnr(np.broadcast_to(xt.mean(0), xs.shape)), abs=1e-4)
    assert got["class_mean"]["psnr"] == pytest.approx(psnr(cls[y_test.numpy()]), abs=1e-4)
    prepared = PreparedData("t", x_train, y_train, x_test, y_test, None, 3)  # input None: [0, 1] already
    assert statistics_of(prepared) is statistics_of(prepared)
    assert torch.equal(statistics_of(prepared).class_mean, stats.class_mean)
    idx = torch.tensor([1, 4])
    assert baselines_of(prepared, idx) == trivial_baselines(stats, x_test[idx], y_test[idx]) != got
    assert baselines_of(prepared, idx) == baselines_of(prepared, idx) != baselines_of(prepared, torch.tensor([0, 2]))
