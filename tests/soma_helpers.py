"""Tiny transformer-like models and matrices with realistic spectra for the SoMA core tests.

Module names mirror DINOv2/timm (``blocks.<i>.attn.{q,k,v,proj}``, ``blocks.<i>.mlp.{fc1,fc2}``)
so that the default SoMA config applies unchanged; weights get controlled singular spectra
(decaying, near-repeated and tiny values) because Gaussian matrices alone hide numerical issues.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def orthonormal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q


def matrix_with_spectrum(out_f: int, in_f: int, spectrum: torch.Tensor,
                         gen: torch.Generator) -> torch.Tensor:
    """float32 ``U diag(spectrum) V^T`` with random orthonormal U, V (spectrum length min side)."""
    k = min(out_f, in_f)
    assert spectrum.numel() == k
    u, v = orthonormal(out_f, k, gen), orthonormal(in_f, k, gen)
    return ((u * spectrum.double()) @ v.T).float()


def realistic_spectrum(k: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Descending singular values of a few shapes met in pretrained weights."""
    idx = torch.arange(k, dtype=torch.float64)
    if kind == "decay":  # power-law decay over three decades
        s = (1.0 + idx) ** -1.5
    elif kind == "repeated":  # plateaus of nearly equal values (1e-7 relative apart)
        s = torch.repeat_interleave(torch.logspace(0, -2, k // 4 + 1, dtype=torch.float64), 4)[:k]
        s = s * (1 + 1e-7 * torch.rand(k, generator=gen, dtype=torch.float64))
    elif kind == "tiny":  # a bulk and a tail of values 1e-6 relative (nearly rank deficient)
        s, m = torch.logspace(0, -1, k, dtype=torch.float64), k // 4
        s[-m:] = 1e-6 * (1 + torch.rand(m, generator=gen, dtype=torch.float64))
    elif kind == "gaussian":
        return torch.linalg.svdvals(torch.randn(k, k, generator=gen, dtype=torch.float64))
    else:
        raise ValueError(kind)
    return torch.sort(s, descending=True).values


def gapped_spectrum(k: int, rank: int, which: str) -> torch.Tensor:
    """Spectrum with a factor-10 gap between the r-th and (r+1)-th value from the chosen end."""
    if which == "minor":
        top = torch.logspace(0, -1, k - rank, dtype=torch.float64)
        low = torch.logspace(-2, -3, rank, dtype=torch.float64)
        return torch.cat([top, low])
    top = torch.logspace(1, 0.5, rank, dtype=torch.float64)
    low = torch.logspace(-0.5, -2, k - rank, dtype=torch.float64)
    return torch.cat([top, low])


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        out = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)),
                                                         split(self.v(x)))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding + mask token + ``blocks.0..depth-1`` + norm + head (all tiny)."""

    def __init__(self, dim: int = 48, hidden: int = 96, depth: int = 4, in_dim: int = 32,
                 classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.mask_token
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


KINDS = ("decay", "repeated", "tiny", "gaussian")


def make_model(seed: int = 0, dim: int = 48, hidden: int = 96, depth: int = 4,
               kinds: tuple[str, ...] = KINDS) -> TinyViT:
    """TinyViT whose block linears get realistic spectra (cycling through ``kinds``)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyViT(dim, hidden, depth)
    with torch.no_grad():
        linears = [m for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and n.startswith("blocks.")]
        for i, lin in enumerate(linears):
            k = min(lin.weight.shape)
            spec = realistic_spectrum(k, kinds[i % len(kinds)], gen)
            lin.weight.copy_(matrix_with_spectrum(*lin.weight.shape, spec, gen))
            lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=gen))
    return model


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def inputs(seed: int = 1, batch: int = 2, tokens: int = 5, in_dim: int = 32) -> torch.Tensor:
    return torch.randn(batch, tokens, in_dim, generator=torch.Generator().manual_seed(seed))


def train_steps(model: nn.Module, x: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps on a dummy loss, so that A and B move away from their start."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| divided by the output scale max |b|."""
    return float((a - b).abs().max() / b.abs().max())
