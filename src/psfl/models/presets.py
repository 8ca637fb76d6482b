"""Model presets registered in :data:`psfl.models.base.MODELS`.

Three families; within a family every preset uses the same channel width c (so all
models put the same kind of symbols on the air), and PLD bridges semantic widths D.

``paper``  (224x224x3, input preset "imagenet224"), Table I:

=========  ===================================================  ===========
preset     layout                                               parameters
=========  ===================================================  ===========
paper-M    MAE ViT-B/16 + MAE decoder (512 wide, 8 blocks)       112,442,112
paper-L    MAE ViT-L/16 + MAE decoder                            330,287,872
paper-H    MAE ViT-H/14 + MAE decoder                            657,924,684
paper-CSC  ResNet-18 + 3 deconvolutions (see psfl.models.csc)    54,700,499
=========  ===================================================  ===========

GSC counts include the bias-free channel codec D -> 512 -> D and exclude the fixed
sin-cos position embeddings, e.g. 111,655,680 + 2 x 768 x 512 = 112,442,112; all three
equal Table I exactly. paper-CSC is 0.038 % below Table I's 54,721,065.

``cpu`` (native size: 28x28x1 or 32x32x3, patch 4 -> 7x7 / 8x8 tokens): the paper's
scaling in miniature, at a real compression: k/n = 1/6 by default, c set by the input
size (GSC c = 6 at 28x28x1, k/n 0.1875; c = 16 at 32x32x3; CSC c = 16 / 64, k/n 0.163 /
1/6); ``model.bandwidth_ratio`` builds them at 1/12 or any other k/n. Before 2026-12-05
they used c = 64 (k/n 2.0 for the GSC, 0.653 for the CSC at 28x28x1); parameter counts
below are at that c. As in the paper the decoder (64 wide, 2 blocks) is shared
and the encoder grows in width and depth (M 64x4, L 96x7, H 128x9; head width 16).
At 28x28x1: 314,768 / 904,496 / 1,912,848 / 161,161 parameters, i.e.
M : L : H : CSC = 1 : 2.87 : 6.08 : 0.51 (paper 1 : 2.94 : 5.85 : 0.49); at 32x32x3:
318,896 / 909,648 / 1,919,024 / 161,819 (1 : 2.85 : 6.02 : 0.51). The CSC trunk keeps
ResNet-18's 2-2-2-2 BasicBlocks at stage widths (8, 16, 32, 48).

``deepjscc`` / ``deepjscc-gdn`` (native size, k/n = 1/6 by default: c = 16 at 32x32x3,
6 at 28x28x1): the DeepJSCC autoencoder of Bourtsoulatze et al. 2019
(:mod:`psfl.models.deepjscc`), the anchor that deep-JSCC results are quoted for.

``tiny`` (native size, c = 8), for tests: at 28x28x1 7,728 / 24,616 / 43,392 / 4,624
parameters (1 : 3.19 : 5.62 : 0.60).
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable

from torch import nn

from psfl.utils.errors import PsflError
from psfl.models.base import MODELS, ModelPreset
from psfl.models.csc import CSCConfig, CSCModel
from psfl.models.deepjscc import DeepJSCCConfig, DeepJSCCModel
from psfl.models.gsc import GSCConfig, GSCModel


def _override(cfg: Any, overrides: dict[str, Any], preset: str) -> Any:
    known = {f.name for f in fields(cfg)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise PsflError(f"model preset {preset!r}: unknown override(s) {bad}; known: {sorted(known)}")
    return replace(cfg, **overrides)


def _gsc(name: str, cfg: GSCConfig, img_size: int | None, in_chans: int | None) -> Callable[..., nn.Module]:
    def build(img_size: int | None = img_size, in_chans: int | None = in_chans, **overrides: Any) -> GSCModel:
        if img_size is None or in_chans is None:
            raise PsflError(f"model preset {name!r} takes the dataset's size: pass img_size and in_chans")
        return GSCModel(_override(cfg, overrides, name), img_size, in_chans)

    return build


def _csc(name: str, cfg: CSCConfig, img_size: int | None, in_chans: int | None) -> Callable[..., nn.Module]:
    def build(img_size: int | None = img_size, in_chans: int | None = in_chans, **overrides: Any) -> CSCModel:
        if img_size is None or in_chans is None:
            raise PsflError(f"model preset {name!r} takes the dataset's size: pass img_size and in_chans")
        return CSCModel(_override(cfg, overrides, name), img_size, in_chans)

    return build


def _jscc(name: str, cfg: DeepJSCCConfig) -> Callable[..., nn.Module]:
    def build(img_size: int | None = None, in_chans: int | None = None, **overrides: Any) -> DeepJSCCModel:
        if img_size is None or in_chans is None:
            raise PsflError(f"model preset {name!r} takes the dataset's size: pass img_size and in_chans")
        return DeepJSCCModel(_override(cfg, overrides, name), img_size, in_chans)

    return build


def _register(name: str, family: str, input_preset: str, build: Callable[..., nn.Module], text: str,
              bandwidth_ratio: float | None = None) -> None:
    MODELS.register(name)(ModelPreset(name, family, input_preset, build, text, bandwidth_ratio))


# ------------------------------------------------------------------ paper (Table I)
_PAPER = {
    "M": GSCConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "L": GSCConfig(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "H": GSCConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}
_PAPER_TEXT = {"M": "MAE ViT-B/16", "L": "MAE ViT-L/16", "H": "MAE ViT-H/14"}
for _tier, _cfg in _PAPER.items():
    _register(f"paper-{_tier}", "gsc", "imagenet224", _gsc(f"paper-{_tier}", _cfg, 224, 3),
              f"GSC-{_tier} of Table I: {_PAPER_TEXT[_tier]} + MAE decoder (512x8), channel c=512")
_register("paper-CSC", "csc", "imagenet224", _csc("paper-CSC", CSCConfig(), 224, 3),
          "CSC of Table I: ResNet-18 + 3 deconvolutions (1024, 144), channel c=512")

# ------------------------------------------------------------------ cpu (native size)
_CPU_DEC = dict(patch_size=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, channel_dim=64)
_CPU = {
    "M": GSCConfig(embed_dim=64, depth=4, num_heads=4, **_CPU_DEC),
    "L": GSCConfig(embed_dim=96, depth=7, num_heads=6, **_CPU_DEC),
    "H": GSCConfig(embed_dim=128, depth=9, num_heads=8, **_CPU_DEC),
}
CPU_BANDWIDTH_RATIO = 1 / 6  # the cpu presets' default k/n (1/12 and others: model.bandwidth_ratio)
for _tier, _cfg in _CPU.items():
    _register(f"cpu-{_tier}", "gsc", "native", _gsc(f"cpu-{_tier}", _cfg, None, None),
              f"GSC-{_tier} for CPU: ViT {_cfg.embed_dim}x{_cfg.depth}, patch 4, decoder 64x2, default k/n 1/6",
              CPU_BANDWIDTH_RATIO)
_register("cpu-CSC", "csc", "native",
          _csc("cpu-CSC", CSCConfig(widths=(8, 16, 32, 48), channel_dim=64, deconv_channels=(32, 16)), None, None),
          "CSC for CPU: ResNet-18 widths (8,16,32,48), deconvolutions (32, 16), default k/n 1/6", CPU_BANDWIDTH_RATIO)

# ------------------------------------------------------------------ DeepJSCC (the field's anchor)
_register("deepjscc", "jscc", "native", _jscc("deepjscc", DeepJSCCConfig()),
          "DeepJSCC (Bourtsoulatze 2019): conv 16-32-32-32-c, PReLU, default k/n 1/6", CPU_BANDWIDTH_RATIO)
_register("deepjscc-gdn", "jscc", "native", _jscc("deepjscc-gdn", DeepJSCCConfig(gdn=True)),
          "DeepJSCC with GDN / inverse GDN before every PReLU, default k/n 1/6", CPU_BANDWIDTH_RATIO)

# ------------------------------------------------------------------ tiny (tests)
_TINY_DEC = dict(patch_size=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, channel_dim=8)
_TINY = {
    "M": GSCConfig(embed_dim=16, depth=1, num_heads=2, **_TINY_DEC),
    "L": GSCConfig(embed_dim=28, depth=2, num_heads=2, **_TINY_DEC),
    "H": GSCConfig(embed_dim=32, depth=3, num_heads=2, **_TINY_DEC),
}
for _tier, _cfg in _TINY.items():
    _register(f"tiny-{_tier}", "gsc", "native", _gsc(f"tiny-{_tier}", _cfg, None, None),
              f"tiny GSC-{_tier} for tests: ViT {_cfg.embed_dim}x{_cfg.depth}, patch 4, c=8")
_register("tiny-CSC", "csc", "native",
          _csc("tiny-CSC", CSCConfig(widths=(1, 2, 4, 8), channel_dim=8, deconv_channels=(8, 4)), None, None),
          "tiny CSC for tests: ResNet-18 widths (1,2,4,8), deconvolutions (8, 4), c=8")
