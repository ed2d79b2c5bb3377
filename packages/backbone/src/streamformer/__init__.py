"""StreamFormer: a causal, streamable video backbone built on SigLIP."""

from . import checkpoints  # noqa: F401 (registers the AutoModel route for original checkpoints)
from .cache import TemporalKVCache, temporal_attention_mask
from .config import StreamFormerConfig
from .model import (
    StreamFormerModel,
    StreamFormerOutput,
    StreamFormerPreTrainedModel,
    StreamFormerVisionModel,
    StreamFormerVisionOutput,
    TemporalContext,
)

__version__ = "0.1.0"

__all__ = [
    "StreamFormerConfig",
    "StreamFormerModel",
    "StreamFormerOutput",
    "StreamFormerPreTrainedModel",
    "StreamFormerVisionModel",
    "StreamFormerVisionOutput",
    "TemporalContext",
    "TemporalKVCache",
    "temporal_attention_mask",
]
