"""StreamFormer configuration.

The fields mirror the original `StreamformerConfig` (so its `config.json` converts one to one),
plus the knobs this implementation adds: LoRA rank/alpha, the temporal position policy and an
optional SigLIP text tower for the dual-encoder `StreamFormerModel`.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PretrainedConfig, SiglipTextConfig
from transformers.configuration_utils import SubConfigSpec

TEMPORAL_POSITION_POLICIES = ("clamp", "interpolate")

logger = logging.getLogger(__name__)

# Keys of the original config.json that carry no information for this implementation.
_ORIGINAL_IGNORED_KEYS = ("clip_config", "architectures", "transformers_version", "model_type", "torch_dtype", "dtype")
# Fields that only the original StreamFormer config has, not transformers' own TimeSformer (both
# say model_type "timesformer").
_ORIGINAL_ONLY_KEYS = ("clip_config", "enable_causal_temporal", "add_lora_spatial")


def is_original_config(config: dict[str, Any]) -> bool:
    """Whether a config dict is the original StreamFormer's (model_type "timesformer", as
    transformers' TimeSformer, but with StreamFormer's own fields or class name)."""
    if config.get("model_type") != "timesformer":
        return False
    architectures = config.get("architectures") or []
    return any(k in config for k in _ORIGINAL_ONLY_KEYS) or any("SigLIP" in a or "Streamformer" in a for a in architectures)


class StreamFormerTextConfig(SiglipTextConfig):
    """SigLIP's text tower config with special tokens inside its vocabulary.

    transformers' `SiglipTextConfig` defaults to CLIP's bos/eos ids (49406/49407), which lie outside
    SigLIP's 32,000-word vocabulary; SigLIP's tokenizer has no bos token and ends with `</s>` = 1.
    (The tower pools the last token, so these ids never change its output; they only have to be valid.)
    """

    bos_token_id: int | None = None
    eos_token_id: int | None = 1


class StreamFormerConfig(PretrainedConfig):
    r"""Configuration of a StreamFormer video backbone (and, with `text_config`, its text tower).

    Defaults are the released ViT-B/16 model: 224 px, patch 16, 12 layers of width 768, 16 learned
    time-embedding rows, exact (erf) GELU, causal temporal attention and rank-32 LoRA (scale 1) on
    the spatial attention.

    Args:
        num_frames: rows of the learned time-embedding table (the training clip length).
        hidden_act: activation of the block MLPs and the pooling head. The original uses exact
            `"gelu"` although SigLIP was trained with `"gelu_pytorch_tanh"`.
        hidden_dropout_prob: dropout on the embeddings, on every attention's output projection and
            on the MLPs' hidden and output activations (as the original); 0 in the released model.
        attention_probs_dropout_prob: dropout on the attention weights.
        enable_causal_temporal: causal (streamable) temporal attention; `False` makes it
            bidirectional (offline only, used by the temporal ablation).
        temporal_gate_init: initial value of each layer's temporal gate (used through tanh). 0, the
            original's, keeps an image model's features intact at the start; a backbone trained
            from scratch has none to protect and learns motion sooner with an open gate.
        add_lora_spatial: build LoRA adapters (through peft) on the spatial qkv and output projection.
        lora_rank, lora_alpha: LoRA shape; the original uses rank 32 with scale alpha/rank = 1.
        temporal_position: how frames past `num_frames` get a time embedding. `"clamp"` (default):
            frame t uses row min(t, num_frames - 1), streamable to any length. `"interpolate"`: the
            original's offline nearest resampling of the table to the clip length; not streamable
            past `num_frames`.
        text_config: a `StreamFormerTextConfig` (SigLIP's, special tokens inside the vocabulary)
            or dict for `StreamFormerModel`; the vision model ignores it.
    """

    model_type = "streamformer"
    sub_configs_defaults = {"text_config": SubConfigSpec(StreamFormerTextConfig, optional=True)}

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_frames: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    attention_type: str = "divided_space_time"
    drop_path_rate: float = 0.0
    enable_causal_temporal: bool = True
    temporal_gate_init: float = 0.0
    add_lora_spatial: bool = True
    lora_rank: int = 32
    lora_alpha: float = 32.0
    temporal_position: str = "clamp"
    text_config: dict | PretrainedConfig | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.attention_type != "divided_space_time":
            raise ValueError(
                f"attention_type={self.attention_type!r} is not supported: StreamFormer uses "
                "'divided_space_time' (the original's other modes were never trained)."
            )
        if self.temporal_position not in TEMPORAL_POSITION_POLICIES:
            raise ValueError(f"temporal_position must be one of {TEMPORAL_POSITION_POLICIES}, got {self.temporal_position!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.add_lora_spatial and self.lora_rank < 1:
            raise ValueError(f"add_lora_spatial needs lora_rank >= 1, got {self.lora_rank}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_original(cls, original: dict[str, Any], **overrides: Any) -> StreamFormerConfig:
        """Convert the original `config.json` (model_type "timesformer") into ours.

        LoRA presence is decided by the checkpoint's tensors, not by `add_lora_spatial` (the original
        silently dropped LoRA weights when the flag was off), so callers pass it in `overrides`.
        """
        fields = {k: v for k, v in original.items() if k not in _ORIGINAL_IGNORED_KEYS}
        # The original defaults to bidirectional temporal attention when the key is absent.
        fields.setdefault("enable_causal_temporal", False)
        fields.setdefault("hidden_act", "gelu")
        known = set(cls.__dataclass_fields__)
        bookkeeping = set(PretrainedConfig().to_dict()) | {"output_attentions", "tie_word_embeddings"}
        unknown = sorted(k for k in set(fields) - known if not (k.startswith("_") or k in bookkeeping))
        if unknown:
            logger.warning("original config: ignoring keys this implementation does not know: %s", unknown)
        fields = {k: v for k, v in fields.items() if k in known} | overrides
        return cls(**fields)
