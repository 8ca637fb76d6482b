"""Push individual images through a trained SC model: reconstruction, per-image PSNR /
SSIM, the evaluator's prediction, and an ``original | reconstruction`` PNG grid."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from psfl.channel import Channel
from psfl.utils.device import module_device, resolve_device, to_device
from psfl.utils.errors import PsflError
from psfl.evaluate.metrics import _ssim_kernel, to_unit_range, using_channel


@dataclass
class TransmitResult:
    original: Tensor  # (B, C, H, W) pixels in [0, 1]
    reconstruction: Tensor  # (B, C, H, W) pixels in [0, 1]
    psnr: list[float]  # dB per image
    ssim: list[float]
    predicted: list[int]  # evaluator's class on the reconstruction
    confidence: list[float]  # its softmax probability
    labels: list[int | None]  # true labels (dataset samples) or None (files)
    names: list[str]  # "test[12]" or the file name
    class_names: tuple[str, ...] = ()  # of the evaluator's dataset, when known

    def class_name(self, k: int | None) -> str:
        if k is None:
            return "-"
        return f"{k} {self.class_names[k]}" if k < len(self.class_names) else str(k)


def load_image_files(paths: Sequence[str | Path], input: Any) -> Tensor:
    """Image files (PNG/JPEG/...) -> (B, C, S, S) in the model's input space: centre-cropped
    to a square, resized to the preset size, converted to its channels (grey or RGB)."""
    from PIL import Image, UnidentifiedImageError

    from psfl.data import to_model_input

    mode = "L" if input.channels == 1 else "RGB"
    arrays = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise PsflError(f"image file {path} does not exist")
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                w, h = im.size
                side = min(w, h)
                box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
                im = im.crop(box).resize((input.size, input.size), Image.Resampling.LANCZOS)
                arrays.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise PsflError(f"image file {path} cannot be read as an image: {e}") from None
    return to_model_input(np.stack(arrays), input)


@torch.no_grad()
def transmit_images(model: nn.Module, evaluator: nn.Module, x: Tensor, snr_db: float,
                    channel: Channel | None = None, generator: torch.Generator | None = None,
                    input: Any = None, labels: Sequence[int | None] | None = None,
                    names: Sequence[str] | None = None) -> TransmitResult:
    """Transmit ``x`` (model input space) at ``snr_db`` and score each image, on the model's
    device (the evaluator must be there too); the returned images are CPU tensors."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x = to_device(x, module_device(model))
    was = model.training
    model.eval()
    with using_channel(model, channel):
        x_hat = model(x, snr_db, generator=generator).x_hat  # (B, C, H, W)
    model.train(was)
    prob = evaluator(x_hat).softmax(-1)
    a, b = to_unit_range(x_hat, input), to_unit_range(x, input)
    k, sigma = _ssim_kernel(min(x.shape[-2:]))
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=k, sigma=sigma, reduction="none")
    conf, pred = prob.max(-1)
    n = x.shape[0]
    return TransmitResult(b.cpu(), a.cpu(), psnr.tolist(), ssim.view(-1).tolist(), pred.tolist(), conf.tolist(),
                          list(labels) if labels is not None else [None] * n,
                          list(names) if names is not None else [str(i) for i in range(n)])


def save_grid(original: Tensor, reconstruction: Tensor, path: str | Path, min_side: int = 96) -> Path:
    """PNG with one row per image: original | reconstruction (pixels in [0, 1]); small
    images are enlarged by an integer factor (nearest) to at least ``min_side`` px."""
    from PIL import Image
    from torchvision.utils import make_grid

    pairs = torch.stack([original, reconstruction], dim=1).flatten(0, 1)  # (2B, C, H, W)
    scale = max(1, -(-min_side // original.shape[-1]))
    if scale > 1:
        pairs = pairs.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    grid = make_grid(pairs, nrow=2, padding=4, pad_value=1.0)  # (3, H', W')
    img = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def model_file(path: str | Path) -> Path:
    """A model file, or the model of a folder: a federated run's ``global_model.pt``
    (written when `psfl run` ends) or a `psfl train` folder's ``model.pt``."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("global_model.pt", "model.pt"):
        if (path / name).is_file():
            return path / name
    raise PsflError(f"folder {str(path)!r} holds no global_model.pt (a federated run writes it when it ends; "
                    f"`psfl run --resume {path}` finishes an interrupted one) and no model.pt (`psfl train`)")


def transmit_checkpoint(checkpoint: str | Path, snr_db: float, out: str | Path,
                        dataset: str | None = None, indices: Sequence[int] = (), split: str = "test",
                        images: Sequence[str | Path] = (), channel: str | None = None,
                        source: str = "auto", data_dir: str | None = None, seed: int = 0,
                        evaluator_arch: str = "lenet", evaluator_checkpoint: str | None = None,
                        evaluator_cache_dir: str | None = None, progress: bool = True,
                        device: str | torch.device = "cpu", evaluator_seed: int = 1,
                        evaluator_epochs: int = 3) -> tuple[TransmitResult, Path]:
    """Load a model saved by `psfl train`, transmit dataset samples (``dataset`` +
    ``indices`` of ``split``) and/or image files, score them with a classifier of the
    model's training dataset (default: the independent scorer, lenet seed 1, which was
    in no training loss), and write the PNG grid to ``out``. Model, evaluator, channel
    noise and metrics run on ``device`` (auto / cpu / cuda[:i]); the noise is drawn from a
    CPU generator seeded with ``seed``, so it does not depend on the device."""
    from psfl import data as D
    from psfl.channel import create_channel
    from psfl.evaluate.evaluator import load_evaluator
    from psfl.models import load_model_checkpoint

    dev = resolve_device(device)
    model = load_model_checkpoint(model_file(checkpoint), device=dev)
    meta = getattr(model, "checkpoint_config", {})
    train_ds = meta.get("dataset") or dataset
    if not train_ds:
        raise PsflError(f"model checkpoint {checkpoint} does not record its dataset; pass --dataset")
    if not indices and not images:
        raise PsflError("nothing to transmit: give --index with --dataset, or --image files")
    if indices and not dataset:
        raise PsflError("--index needs --dataset")
    ds = D.load_dataset(dataset or train_ds, source=source, data_dir=data_dir)
    res = D.resolve_for(ds, meta.get("input_preset", "native"))
    if (res.size, res.channels) != (model.img_size, model.in_chans):
        raise PsflError(f"dataset {ds.name!r} gives {res.size}px x {res.channels}ch inputs but the model "
                        f"expects {model.img_size}px x {model.in_chans}ch")
    xs, labels, names = [], [], []
    if indices:
        arr_x, arr_y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        bad = [i for i in indices if not 0 <= i < arr_x.shape[0]]
        if bad:
            raise PsflError(f"--index {bad[0]} is out of range: {ds.name} {split} has {arr_x.shape[0]} images")
        xs.append(D.to_model_input(arr_x[list(indices)], res))
        labels += [int(arr_y[i]) for i in indices]
        names += [f"{ds.name} {split}[{i}]" for i in indices]
    if images:
        xs.append(load_image_files(images, res))
        labels += [None] * len(images)
        names += [Path(p).name for p in images]
    evaluator = load_evaluator(train_ds, source, data_dir, res.name, evaluator_arch, evaluator_epochs,
                               checkpoint=evaluator_checkpoint, cache_dir=evaluator_cache_dir, progress=progress,
                               seed=evaluator_seed, device=dev)
    ch = create_channel(channel) if channel else None
    result = transmit_images(model, evaluator, torch.cat(xs), snr_db, ch, torch.Generator().manual_seed(seed),
                             res, labels, names)
    result.class_names = tuple(D.DATASETS.get(train_ds).class_names)
    return result, save_grid(result.original, result.reconstruction, out)
