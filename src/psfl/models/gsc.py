"""GSC model: MAE-style ViT semantic codec around a linear channel codec (Section II-A).

::

    m (B,C,H,W) --PatchEmbed (Eq. 1) + fixed sin-cos P_i (Eq. 2)--> (B, N, D)
      [MAE random masking: keep L = N (1 - mask_ratio) tokens]
      + cls token --ViT blocks (Eqs. 3-4) + norm--> drop cls --> S (B, L, D)
    S --channel_encoder D->c (bias-free)--> X --channel (Eq. 6)--> Y
    Y --channel_decoder c->D (bias-free)--> C (B, L, D)
    C --decoder_embed D->D_dec, [mask tokens, unshuffle], + fixed sin-cos
      --decoder blocks + norm--> decoder_pred (P*P*C_in per patch) --unpatchify--> m_hat

Parameter names follow the official MAE code (``patch_embed.proj``, ``cls_token``,
``blocks.i.*``, ``norm``, ``mask_token``, ``decoder_embed``, ``decoder_blocks.i.*``,
``decoder_norm``, ``decoder_pred``) so its checkpoints load (see
:mod:`psfl.models.checkpoints`). The position embeddings ``pos_embed`` and
``decoder_pos_embed`` are fixed 2-D sin-cos tables stored as non-persistent buffers: not
trainable, not counted, not in the state dict (they are recomputed from the grid).

The cls token. The encoder prepends a cls token (as MAE does) but the cls output is
*not* transmitted: only the patch tokens cross the channel, so ``X``/``Y`` are exactly
the transmitted symbols ``(B, L, c)``. The decoder therefore sees patch tokens only
and uses the patch rows ``decoder_pos_embed[:, 1:]`` (the table keeps MAE's
``N + 1`` rows so shapes match official checkpoints).

Masking. With ``mask_ratio > 0`` (MAE pre-training) the encoder, the channel and
``S``/``X``/``Y``/``C`` cover the L visible tokens only; the decoder fills the masked
positions with ``mask_token`` and ``SCOutput.mask`` is ``(B, N)`` with 1 = masked. With
``mask_ratio = 0`` (the default, the SC system of the paper) ``mask_token`` is unused.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from psfl.channel import create_channel
from psfl.utils.device import rand
from psfl.models.base import SCModel


@dataclass(frozen=True)
class GSCConfig:
    """Architecture of a GSC (MAE ViT) model. Defaults: MAE ViT-B/16 + standard decoder."""

    patch_size: int = 16
    embed_dim: int = 768  # D
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    channel_dim: int = 512  # c
    channel: str = "awgn"
    norm_eps: float = 1e-6  # MAE's LayerNorm eps


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """MAE's 1-D table: (M,) positions -> (M, dim) = [sin(pos w), cos(pos w)],
    w_i = 1 / 10000^(i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> Tensor:
    """Fixed 2-D sin-cos position embeddings P_i of Eq. 2, as in the official MAE code:
    the first dim/2 channels encode the column index, the last dim/2 the row index;
    row-major patch order; an all-zero row 0 for the cls token. Returns (1, [1+] h*w, dim)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def random_masking(n: int, batch: int, mask_ratio: float, generator: torch.Generator | None,
                   device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """MAE per-sample random masking by argsort of uniform noise.

    Returns ``ids_keep (B, L)``, ``ids_restore (B, N)`` and ``mask (B, N)`` (1 = masked)
    with L = int(N (1 - mask_ratio)).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(n * (1.0 - mask_ratio))
    noise = rand((batch, n), generator, device=device)  # (B, N), same draws on every device
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, n, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, N) in original patch order
    return ids_shuffle[:, :keep], ids_restore, mask


def patchify(imgs: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), per-patch order (p, q, c) as in MAE."""
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, p * p * C)


def unpatchify(x: Tensor, p: int, grid: tuple[int, int], chans: int) -> Tensor:
    """(B, N, p*p*C) -> (B, C, h*p, w*p); inverse of :func:`patchify`."""
    h, w = grid
    B = x.shape[0]
    x = x.reshape(B, h, w, p, p, chans)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, chans, h * p, w * p)


class GSCModel(SCModel):
    """Generative semantic-communication model: MAE ViT encoder/decoder (module docstring)."""

    family = "gsc"

    def __init__(self, cfg: GSCConfig = GSCConfig(), img_size: int = 224, in_chans: int = 3) -> None:
        super().__init__()
        if img_size % cfg.patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.img_size, self.in_chans, self.patch_size = img_size, in_chans, cfg.patch_size
        self.sem_dim, self.channel_dim = cfg.embed_dim, cfg.channel_dim
        self.grid = (img_size // cfg.patch_size, img_size // cfg.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        D, Dd = cfg.embed_dim, cfg.decoder_embed_dim

        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)

        def block(d: int, heads: int) -> Block:
            return Block(d, heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)

        # semantic encoder S(., theta)
        self.patch_embed = PatchEmbed(img_size, cfg.patch_size, in_chans, D)  # E of Eq. 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_buffer("pos_embed", sincos_2d(D, self.grid), persistent=False)  # (1, 1+N, D)
        self.blocks = nn.ModuleList(block(D, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = norm(D)
        # channel codec: alpha (Eq. 5) and beta (Eq. 7)
        self.channel_encoder = nn.Linear(D, cfg.channel_dim, bias=False)
        self.channel = create_channel(cfg.channel)
        self.channel_decoder = nn.Linear(cfg.channel_dim, D, bias=False)
        # semantic decoder S^-1(., delta)
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.register_buffer("decoder_pos_embed", sincos_2d(Dd, self.grid), persistent=False)
        self.decoder_blocks = nn.ModuleList(block(Dd, cfg.decoder_num_heads) for _ in range(cfg.decoder_depth))
        self.decoder_norm = norm(Dd)
        self.decoder_pred = nn.Linear(Dd, cfg.patch_size ** 2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's initialisation (xavier-uniform linears and patch projection, zero biases,
        unit LayerNorms, N(0, 0.02) cls/mask tokens), except a small pixel head."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The pixel head starts small: MAE regresses unit-variance (normalised) pixels,
        # psfl's CPU presets regress raw [0, 1] pixels, where a xavier head's unit-variance
        # start costs the first hundreds of steps (MSE ~1.4 instead of ~0.2) and, under
        # SGD with momentum, can diverge.
        nn.init.trunc_normal_(self.decoder_pred.weight, std=0.02)

    def semantic_encode(self, x, generator=None, mask_ratio=0.0):
        t = self.patch_embed(x) + self.pos_embed[:, 1:]  # (B, N, D), Eqs. 1-2
        ctx: dict[str, Tensor] = {}
        if mask_ratio > 0:
            ids_keep, ctx["ids_restore"], ctx["mask"] = random_masking(
                self.num_patches, x.shape[0], mask_ratio, generator, x.device)
            t = torch.gather(t, 1, ids_keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # (B, L, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(t.shape[0], -1, -1)  # (B, 1, D)
        t = torch.cat([cls, t], dim=1)  # (B, 1+L, D)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 1:], ctx  # S: (B, L, D), cls dropped (not transmitted)

    def semantic_decode(self, C, ctx):
        t = self.decoder_embed(C)  # (B, L, Dd)
        if "ids_restore" in ctx:
            ids_restore = ctx["ids_restore"]  # (B, N)
            B, L, Dd = t.shape
            fill = self.mask_token.expand(B, ids_restore.shape[1] - L, -1)
            t = torch.cat([t, fill], dim=1)  # (B, N, Dd) in shuffled order
            t = torch.gather(t, 1, ids_restore.unsqueeze(-1).expand(-1, -1, Dd))  # unshuffle
        t = t + self.decoder_pos_embed[:, 1:]
        for blk in self.decoder_blocks:
            t = blk(t)
        t = self.decoder_pred(self.decoder_norm(t))  # (B, N, P*P*C_in)
        return unpatchify(t, self.patch_size, self.grid, self.in_chans)  # (B, C_in, H, W)

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, P*P*C) in the order of ``decoder_pred``."""
        return patchify(imgs, self.patch_size)
