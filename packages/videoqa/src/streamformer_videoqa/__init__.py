"""Video question answering on StreamFormer: frozen video tower, LLaVA-style projector, any causal LM."""

from .model import (
    StreamFormerForVideoQA,
    StreamFormerVideoQAConfig,
    expand_placeholder,
    pool_patches,
)

__all__ = ["StreamFormerForVideoQA", "StreamFormerVideoQAConfig", "expand_placeholder", "pool_patches"]
