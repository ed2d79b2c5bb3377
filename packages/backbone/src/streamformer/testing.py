"""A tiny StreamFormer for tests and examples: random weights, a few kilobytes, CPU-fast."""

from __future__ import annotations

import torch

from .config import StreamFormerConfig
from .model import StreamFormerVisionModel

TINY_CONFIG = dict(
    image_size=32,
    patch_size=8,
    num_frames=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    lora_rank=4,
    lora_alpha=4.0,
)


def tiny_config(**overrides) -> StreamFormerConfig:
    """`TINY_CONFIG` with `overrides`: 32 px frames, a 4x4 patch grid, 2 layers of width 32."""
    return StreamFormerConfig(**{**TINY_CONFIG, **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, in place, gates (0.7) and LoRA B included, so every path of a
    test model carries signal (a fresh model has closed gates and LoRA B = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("temporal_attention_gating"):
                p.fill_(0.7)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def tiny_model(seed: int = 0, **overrides) -> StreamFormerVisionModel:
    """A randomized tiny vision model (`tiny_config(**overrides)`, `randomize_`), in eval mode."""
    return randomize_(StreamFormerVisionModel(tiny_config(**overrides)), seed).eval()
