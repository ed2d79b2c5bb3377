"""A tiny StreamFormer for tests and examples: random weights, a few kilobytes, CPU-fast."""

from __future__ import annotations

from .config import StreamFormerConfig

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
