"""The pretraining objective: masked reconstruction across conditions plus token consistency.

Three terms, all label-free. (1) Masked image modelling (MAE-style: the encoder sees only the
visible patches, a one-block pixel decoder predicts the rest; per-patch normalised pixel targets)
keeps the features informative and cannot collapse. (2) The same decoder also predicts the
*other* view of the pair (same scene, another random condition) at every patch, a cross-view
completion task that asks the encoder for what the scene is rather than how it is lit.
(3) The student's visible tokens, through a small predictor, regress the EMA teacher's tokens of
the other view at the same places (cosine; the teacher sees the same visible places of the other
view, which costs a quarter of a full forward), which makes patch features agree across light and
weather, the property a detector trained on clear days needs at night. The encoder forward here
embeds a crop with the position embedding of its true place in the full image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.dinov3 import DinoV3VisionTransformer
from ..modeling.vit import DinoVisionTransformer
from ..modeling.vit_layers import Block

__all__ = ["CrossConditionMIM", "encode", "patchify", "random_keep"]


def _positions(table: torch.Tensor, grid: tuple[int, int], offsets: torch.Tensor, h: int,
               w: int) -> torch.Tensor:
    """Rows of a (G_h * G_w, D) position table for h x w crops at patch `offsets` (B, 2)."""
    dim = table.shape[-1]
    table = table.reshape(grid[0], grid[1], dim)
    rows = offsets[:, :1] + torch.arange(h, device=offsets.device)
    cols = offsets[:, 1:] + torch.arange(w, device=offsets.device)
    return table[rows[:, :, None], cols[:, None, :]].reshape(offsets.shape[0], h * w, dim)


def encode(vit: DinoVisionTransformer | DinoV3VisionTransformer, images: torch.Tensor,
           offsets: torch.Tensor, keep: torch.Tensor | None = None,
           grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Final-norm tokens ``[cls, (registers), patches]`` of crops; only the patches in `keep`
    (B, K) if given. A DINOv3 ViT needs the full image's patch `grid` for its RoPE."""
    if isinstance(vit, DinoV3VisionTransformer):
        if grid is None:
            raise ValueError("encode: a DINOv3 ViT needs the full image's patch grid")
        return _encode_rope(vit, images, offsets, keep, grid)
    x = vit.patch_embed(images)
    batch, dim, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = x + _positions(vit.pos_embed[0, 1:], vit.pos_grid, offsets, h, w)
    if keep is not None:
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, dim))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(batch, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in vit.blocks:
        x = block(x)
    return vit.norm(x)


def _encode_rope(vit: DinoV3VisionTransformer, images: torch.Tensor, offsets: torch.Tensor,
                 keep: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
    """`encode` for DINOv3: each crop patch is rotated with the RoPE of its true place in the
    full image (the full grid's table, rows picked like a position embedding's)."""
    x = vit.patch_embed(images)
    batch, dim, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    sin, cos = vit.rope_embed(grid, device=x.device)
    sin, cos = (_positions(t, grid, offsets, h, w) for t in (sin, cos))
    if keep is not None:
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, dim))
        sin, cos = (torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
                    for t in (sin, cos))
    rope = (sin[:, None], cos[:, None])  # (B, 1, K, head_dim): one table per crop, all heads
    x = vit.with_prefix(x)
    for block in vit.blocks:
        x = block(x, rope)
    return vit.norm(x)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, patch * patch * 3), patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), -1)


def _normalised(target: torch.Tensor) -> torch.Tensor:
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1e-6).sqrt()


def random_keep(noise: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, keep) of the visible patches (smallest noise, sorted) and a (B, N) mask (True=hidden)."""
    order = noise.argsort(dim=1)
    kept = order[:, :keep].sort(dim=1).values
    hidden = torch.ones_like(noise, dtype=torch.bool)
    hidden.scatter_(1, kept, False)
    return kept, hidden


class CrossConditionMIM(nn.Module):
    """Pixel decoder and token predictor around a ViT; `forward` returns the three loss terms."""

    def __init__(self, vit: DinoVisionTransformer | DinoV3VisionTransformer,
                 decoder_dim: int = 128, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        dim, patch = vit.embed_dim, vit.patch_size
        self.patch = patch
        self.grid = tuple(grid) if grid is not None else vit.pos_grid
        self.embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos = nn.Parameter(torch.zeros(self.grid[0] * self.grid[1], decoder_dim))
        self.block = Block(decoder_dim, 4, 4 * decoder_dim, layer_scale_init=None)
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.head = nn.Linear(decoder_dim, 2 * patch * patch * 3)
        self.predictor = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, student: DinoVisionTransformer, teacher: DinoVisionTransformer,
                view: torch.Tensor, other: torch.Tensor, offsets: torch.Tensor,
                noise: torch.Tensor, mask_ratio: float) -> dict[str, torch.Tensor]:
        h, w = view.shape[-2] // self.patch, view.shape[-1] // self.patch
        num = h * w
        keep, hidden = random_keep(noise, max(1, round(num * (1.0 - mask_ratio))))
        tokens = student_tokens = encode(student, view, offsets, keep, self.grid)
        batch, dim = tokens.shape[0], self.mask_token.shape[-1]
        prefix = tokens.shape[1] - keep.shape[1]  # cls (+ registers)
        visible = self.embed(tokens[:, prefix:])
        full = self.mask_token.expand(batch, num, dim).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, dim), visible)
        full = full + _positions(self.pos, self.grid, offsets, h, w)
        full = torch.cat([self.embed(tokens[:, :1]), full], dim=1)
        pred = self.head(self.norm(self.block(full)))[:, 1:]
        own_pred, other_pred = pred.chunk(2, dim=-1)
        own_err = (own_pred - _normalised(patchify(view, self.patch))).pow(2).mean(dim=-1)
        own = (own_err * hidden).sum() / hidden.sum()
        cross = (other_pred - _normalised(patchify(other, self.patch))).pow(2).mean()
        with torch.no_grad():  # the teacher sees the same visible places of the other view
            target = encode(teacher, other, offsets, keep, self.grid)
        guess = self.predictor(student_tokens)
        consistency = (2.0 - 2.0 * F.cosine_similarity(guess, target, dim=-1)).mean()
        return {"mim": own, "cross": cross, "consistency": consistency}
