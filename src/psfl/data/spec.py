"""Input presets: how raw uint8 images become model inputs for a model preset.

A model preset names an input preset; the data pipeline resolves it against the dataset
(native size/channels when ``size``/``channels`` is None) and preprocesses the whole split
once (resize, grey -> RGB, normalise), caching the float tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

from psfl.utils.registry import Registry


@dataclass(frozen=True)
class InputSpec:
    name: str
    size: int | None  # square side in pixels; None = the dataset's native size
    channels: int | None  # 1 or 3; None = the dataset's native channels (grey -> RGB if 3)
    mean: tuple[float, ...]  # per-channel (broadcast if one value)
    std: tuple[float, ...]

    def resolve(self, native_size: int, native_channels: int) -> "ResolvedInput":
        c = self.channels or native_channels
        mean = self.mean * c if len(self.mean) == 1 else self.mean
        std = self.std * c if len(self.std) == 1 else self.std
        if len(mean) != c or len(std) != c:
            raise ValueError(f"input preset {self.name!r}: mean/std do not match {c} channels")
        return ResolvedInput(self.name, self.size or native_size, c, tuple(mean), tuple(std))


@dataclass(frozen=True)
class ResolvedInput:
    name: str
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


INPUT_PRESETS: Registry[InputSpec] = Registry("input preset")


def _add(spec: InputSpec) -> None:
    INPUT_PRESETS.register(spec.name)(spec)


# CPU presets: native resolution, pixels in [0, 1] (so MSE/PSNR are in pixel units).
_add(InputSpec("native", None, None, (0.0,), (1.0,)))
# Paper presets: 224x224 RGB with ImageNet statistics, as MAE/ResNet-101 expect.
_add(InputSpec("imagenet224", 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
