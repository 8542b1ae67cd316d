"""Randomised ViTs and a nudged tiny SoMA detector, for the tests that compare ViT weights across
layouts and tools (loading, export, spectrum analysis)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TINY_DET = str(REPO / "configs" / "test" / "tiny_soma_det.yaml")
VIT_KEYS = ("gamma", "lambda1", "norm", "token", "pos_embed")


def randomize_vit(model: nn.Module, seed: int = 0, keys: tuple[str, ...] = VIT_KEYS,
                  scale: float = 0.5, bias_scale: float | None = None) -> nn.Module:
    """Random layer scales, norms, tokens and position embeddings (parameters whose name holds one
    of `keys`: N(1, scale) for norm weights, N(0, scale) otherwise), and with `bias_scale` random
    biases too, so that every parameter matters in a comparison: freshly built models hold ones
    and zeros there, which would hide a mis-mapped tensor. Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in keys):
                centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(centre + scale * torch.randn(p.shape, generator=gen))
            elif bias_scale is not None and name.endswith("bias"):
                p.copy_(bias_scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def nudged_tiny_detector(pretrained: Path, out_dir: Path) -> tuple[nn.Module, list[str], Path]:
    """The tiny SoMA detector at 112 px on the `pretrained` ViT file, its trainable weights moved
    by 0.05 N(0, 1) (global torch RNG) as a fine-tuning would, saved as `out_dir/model_final.pth`.
    Returns the model, the config overrides it was built with and the checkpoint path."""
    from detectron2.modeling import build_model

    from soma_d2.config import build_cfg

    opts = ["INPUT.IMAGE_SIZE", "112", "MODEL.SOMA.PRETRAINED", str(pretrained)]
    model = build_model(build_cfg(TINY_DET, opts))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    weights = out_dir / "model_final.pth"
    torch.save({"model": model.state_dict()}, weights)
    return model, opts, weights
