"""Checkpoints: official MAE / timm weights into a GSC model, and psfl's own model files.

:func:`load_mae_checkpoint` accepts

- facebookresearch/mae ``mae_pretrain_vit_{base,large,huge}.pth``: ``{"model": state}``
  with the encoder only (``patch_embed.proj.*``, ``cls_token``, ``pos_embed``,
  ``blocks.i.*``, ``norm.*``);
- ``mae_visualize_vit_*.pth`` and ``*_full.pth``: encoder and decoder
  (``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks.i.*``,
  ``decoder_norm``, ``decoder_pred``);
- timm ``vit_*_patch16_224.mae`` state dicts (same names; ``fc_norm``/``head`` are
  skipped when present);
- raw state dicts, ``{"state_dict": ...}``, and DDP ``module.`` prefixes.

Key groups are all-or-nothing: the encoder must be complete; the decoder and the channel
codec are loaded when the checkpoint has them (MAE files never have the channel codec,
which keeps its fresh initialisation). The fixed sin-cos tables ``pos_embed`` and
``decoder_pos_embed`` are not loaded (the model recomputes them); their shapes are checked
and the largest deviation from the model's table is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from psfl.utils.errors import PsflError

# top-level module/parameter name -> key group
_GROUPS = {
    "patch_embed": "encoder", "cls_token": "encoder", "blocks": "encoder", "norm": "encoder",
    "mask_token": "decoder", "decoder_embed": "decoder", "decoder_blocks": "decoder",
    "decoder_norm": "decoder", "decoder_pred": "decoder",
    "channel_encoder": "channel", "channel_decoder": "channel",
}
_FIXED = ("pos_embed", "decoder_pos_embed")  # sin-cos buffers: checked, not loaded
_IGNORED_PREFIXES = ("head.", "fc_norm.")  # classifier parts of timm/fine-tuned ViTs

CHECKPOINT_FORMAT = "psfl-model"
CHECKPOINT_VERSION = 1


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # model keys filled from the checkpoint
    skipped: list[str] = field(default_factory=list)  # checkpoint keys not loaded (fixed / head)
    not_in_checkpoint: list[str] = field(default_factory=list)  # model keys left as initialised
    pos_embed_max_abs_diff: dict[str, float] = field(default_factory=dict)


def _torch_load(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise PsflError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-torch files
        raise PsflError(f"{what} {str(path)!r} cannot be read as a weights-only torch file: {e}") from None


def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PsflError(f"{source}: expected a state dict of tensors (optionally under 'model')")
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _fmt(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_mae_checkpoint(model: nn.Module, path_or_state: str | Path | Mapping[str, Any],
                        strict: bool = True) -> LoadReport:
    """Load official MAE / timm ViT weights into a GSC model (module docstring).

    ``strict``: any missing key of a present group, unexpected key or shape mismatch
    raises :class:`PsflError` naming them all; otherwise matching keys are loaded and the
    rest reported. Returns a :class:`LoadReport`.
    """
    if getattr(model, "family", None) != "gsc":
        raise PsflError(f"MAE checkpoints load into GSC models only, not {type(model).__name__}")
    source = str(path_or_state) if isinstance(path_or_state, (str, Path)) else "state dict"
    raw = _torch_load(path_or_state, "MAE checkpoint") if isinstance(path_or_state, (str, Path)) else path_or_state
    state = _unwrap(raw, source)
    own = model.state_dict()
    buffers = dict(model.named_buffers())
    report = LoadReport()
    unexpected, mismatched, take = [], [], {}
    for k, v in state.items():
        if k in _FIXED:
            ref = buffers.get(k)
            if ref is None:
                unexpected.append(k)
            elif _shape(v) != _shape(ref):
                mismatched.append(f"{k}: checkpoint {_shape(v)} vs model {_shape(ref)}")
            else:
                if ref.device.type != "meta":
                    report.pos_embed_max_abs_diff[k] = float((v.float().cpu() - ref.float().cpu()).abs().max())
                report.skipped.append(k)
        elif k.startswith(_IGNORED_PREFIXES):
            report.skipped.append(k)
        elif k not in own:
            unexpected.append(k)
        elif _shape(v) != _shape(own[k]):
            mismatched.append(f"{k}: checkpoint {_shape(v)} vs model {_shape(own[k])}")
        else:
            take[k] = v
    present = {_GROUPS.get(k.split(".")[0]) for k in take} | {_GROUPS.get(m.split(":")[0].split(".")[0]) for m in mismatched}
    missing = [k for k in own if _GROUPS.get(k.split(".")[0], "other") in present | {"encoder"}
               and k not in take and not any(m.startswith(k + ":") for m in mismatched)]
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            by_group: dict[str, int] = {}
            for k in missing:
                grp = _GROUPS.get(k.split(".")[0], "other")
                by_group[grp] = by_group.get(grp, 0) + 1
            groups = ", ".join(f"{g}: {n}" for g, n in by_group.items())
            parts.append(f"missing {len(missing)} key(s) ({groups}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch in {len(mismatched)} key(s): {_fmt(mismatched, 4)}")
        raise PsflError(f"MAE checkpoint {source} does not fit the model: " + "; ".join(parts))
    report.skipped += unexpected
    model.load_state_dict(take, strict=False)
    report.loaded = sorted(take)
    report.not_in_checkpoint = [k for k in own if k not in take]
    return report


def save_model_checkpoint(model: nn.Module, path: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (built by :func:`psfl.models.create_model`) with its preset name,
    input size and channels, build overrides and a plain ``config`` dict (e.g. the
    pre-training settings) to ``path``; :func:`load_model_checkpoint` rebuilds it."""
    preset = getattr(model, "preset", None)
    if not preset:
        raise PsflError("only models built by psfl.models.create_model can be saved (no preset recorded)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "preset": preset["name"],
                "img_size": preset["img_size"], "in_chans": preset["in_chans"],
                "overrides": dict(preset["overrides"]), "config": dict(config or {}),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
    return path


def load_model_checkpoint(path: str | Path, device: torch.device | str | None = None) -> nn.Module:
    """Rebuild the model saved by :func:`save_model_checkpoint` (strict state-dict load),
    read onto the CPU and then moved to ``device`` if given (a checkpoint written on any
    device loads on any other). The saved ``config`` is attached as ``model.checkpoint_config``."""
    from psfl.models import create_model

    ckpt = _torch_load(path, "model checkpoint")
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PsflError(f"{str(path)!r} is not a psfl model checkpoint (no format={CHECKPOINT_FORMAT!r}); "
                        "official MAE weights go through load_mae_checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise PsflError(f"{str(path)!r}: unsupported checkpoint version {ckpt.get('version')!r}")
    # every model built since presets have a default k/n records its c as an override;
    # a checkpoint without one was built at the preset config's fixed c
    model = create_model(ckpt["preset"], img_size=ckpt["img_size"], in_chans=ckpt["in_chans"],
                         preset_ratio=False, **ckpt.get("overrides", {}))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise PsflError(f"{str(path)!r} does not match preset {ckpt['preset']!r}: {e}") from None
    model.checkpoint_config = dict(ckpt.get("config", {}))
    if device is not None:
        model.to(device)
    return model


def state_digest(state: dict[str, Tensor]) -> str:
    """Content hash of a state dict (names, shapes, dtypes, bytes): a model's identity."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().numpy().tobytes())
    return h.hexdigest()
