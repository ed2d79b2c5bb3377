"""StreamFormer as the vision tower of a causal LM, in the manner of LLaVA-NeXT-Video.

    frames [B, T, 3, S, S] -> frozen StreamFormer -> last_hidden_state [B, T, N, D]
        -> projector (Linear D->H, GELU, Linear H->H), per token
        -> 2x2 average pooling of each frame's patch grid (14x14 -> 7x7 = 49 tokens at 224 px)
        -> frame-major [B, T * 49, H], no separators
        -> written into the LM's input embeddings at the video placeholder tokens

The tower is always frozen and runs without gradients; the attention-pooling head is not used.
Prompts carry one placeholder token per visual token (`expand_placeholder` turns the single
placeholder of a conversation into T x tokens-per-frame copies), so sequence lengths, labels and
attention masks are final before the model sees them. An image is a 1-frame clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec

from streamformer import StreamFormerConfig, StreamFormerVisionModel, TemporalKVCache


class StreamFormerVideoQAConfig(PretrainedConfig):
    r"""A StreamFormer tower, a projector and a causal LM.

    Args:
        vision_config: the tower's `StreamFormerConfig` (or dict).
        text_config: the LM's config (or dict with its `model_type`): any `AutoModelForCausalLM`.
        video_token_id: the LM vocabulary's placeholder token, one per visual token.
        pool_stride: the side of the average-pooling window over each frame's patch grid (2: a
            14x14 grid becomes 7x7; an odd side rounds up, the edge cells averaging fewer patches).
        projector_hidden_act: the projector's activation (`mlp2x_gelu`: "gelu").
    """

    model_type = "streamformer_videoqa"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(StreamFormerConfig),
        "text_config": SubConfigSpec(AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    video_token_id: int | None = None
    pool_stride: int = 2
    projector_hidden_act: str = "gelu"

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        if self.pool_stride < 1:
            raise ValueError(f"pool_stride must be >= 1, got {self.pool_stride}")
        if self.video_token_id is not None and not 0 <= self.video_token_id < self.text_config.vocab_size:
            raise ValueError(
                f"video_token_id {self.video_token_id} is outside the LM's vocabulary ({self.text_config.vocab_size})"
            )

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens one frame gives the LM: the pooled patch grid."""
        side = math.isqrt(self.vision_config.num_patches)
        return math.ceil(side / self.pool_stride) ** 2


def pool_patches(tokens: Tensor, stride: int = 2) -> Tensor:
    """Average-pool each frame's square patch grid: [B, T, N, H] -> [B, T, ceil(g / stride)^2, H]
    with g = sqrt(N), row-major. At stride 2 on an even grid this equals the original's bilinear
    halving (`align_corners=False`)."""
    b, t, n, h = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patches per frame do not form a square grid")
    grid = tokens.reshape(b * t, side, side, h).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, stride, ceil_mode=True)
    return pooled.permute(0, 2, 3, 1).reshape(b, t, -1, h)


def expand_placeholder(input_ids: list[int], token_id: int, count: int) -> list[int]:
    """Token ids with their one placeholder `token_id` repeated `count` times (one per visual
    token). A sequence without a placeholder, or with more than one, is refused."""
    found = [i for i, token in enumerate(input_ids) if token == token_id]
    if len(found) != 1:
        raise ValueError(f"a prompt needs exactly one video placeholder (token {token_id}), found {len(found)}")
    at = found[0]
    return [*input_ids[:at], *[token_id] * count, *input_ids[at + 1 :]]


class Projector(nn.Module):
    """LLaVA's `mlp2x_gelu`: Linear(D -> H), activation, Linear(H -> H), applied to every token."""

    def __init__(self, vision_size: int, text_size: int, act: str = "gelu") -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_size, text_size)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_size, text_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class StreamFormerForVideoQA(PreTrainedModel):
    """Frozen StreamFormer tower + projector + causal LM, saved and loaded as one folder.

    Build it from trained parts with `from_parts`; `save_pretrained` / `from_pretrained` then keep
    the three together (safetensors).
    """

    config_class = StreamFormerVideoQAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("video", "text")
    _supports_sdpa = True

    def __init__(
        self,
        config: StreamFormerVideoQAConfig,
        vision_tower: StreamFormerVisionModel | None = None,
        language_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        self.vision_tower = vision_tower or StreamFormerVisionModel(config.vision_config)
        self.vision_tower.requires_grad_(False).eval()
        self.projector = Projector(config.vision_config.hidden_size, config.text_config.hidden_size, config.projector_hidden_act)
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @classmethod
    def from_parts(
        cls,
        vision: str | StreamFormerVisionModel,
        language_model: str | PreTrainedModel,
        tokenizer,
        video_token: str = "<video>",
        **config,
    ) -> StreamFormerForVideoQA:
        """A new model from a trained tower and LM (folders, or models already loaded).

        The tower may be in our format or the original's; its LoRA is merged (it stays frozen).
        `video_token` is added to `tokenizer` (in place) when missing, and the LM's embeddings grow
        to the tokenizer's size. The projector starts random (train it with stage 1).
        """
        tower = StreamFormerVisionModel.from_pretrained(vision) if isinstance(vision, str) else vision
        if tower.config.add_lora_spatial:
            tower.merge_lora()
        lm = AutoModelForCausalLM.from_pretrained(language_model) if isinstance(language_model, str) else language_model
        if video_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [video_token]})
        if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
            lm.resize_token_embeddings(len(tokenizer))
        video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        attention = {"vision_config": tower.config._attn_implementation, "text_config": lm.config._attn_implementation}
        settings = StreamFormerVideoQAConfig(
            vision_config=tower.config, text_config=lm.config, video_token_id=video_token_id, **config
        )
        model = cls(settings, vision_tower=tower, language_model=lm)
        # The composite config resets its sub-configs' attention choice, which the parts' own
        # modules read: give them back the one they were loaded with.
        model.set_attn_implementation({name: impl or "sdpa" for name, impl in attention.items()})
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # Loading builds fresh parameters, trainable by default: freeze the tower again (an
        # optimizer or DDP that saw it trainable would wait for gradients it never gets).
        model.vision_tower.requires_grad_(False).eval()
        return loaded

    def train(self, mode: bool = True) -> StreamFormerForVideoQA:
        super().train(mode)
        self.vision_tower.eval()  # frozen: no dropout, whatever the rest does
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def tower_features(self, pixel_values: Tensor, cache: TemporalKVCache | None = None) -> Tensor:
        """Frames [B, T, 3, S, S] in [-1, 1] -> the frozen tower's patch features [B, T, N, D].

        With `cache`, the T frames continue the stream the cache holds (see the backbone)."""
        with torch.no_grad():
            return self.vision_tower(pixel_values, cache=cache).last_hidden_state

    def encode_video(
        self, pixel_values: Tensor | None = None, cache: TemporalKVCache | None = None, vision_features: Tensor | None = None
    ) -> Tensor:
        """Frames [B, T, 3, S, S] -> visual tokens [B, T * tokens_per_frame, H], frame-major.

        `vision_features` ([B, T, N, D] from `tower_features`, computed once per video of a small
        data set asked many questions) replace the frames: the tower is frozen, so they are what
        the frames would give."""
        if (pixel_values is None) == (vision_features is None):
            raise ValueError("give either pixel_values or vision_features")
        hidden = self.tower_features(pixel_values, cache) if vision_features is None else vision_features
        tokens = self.projector(hidden.to(self.projector.linear_1.weight.dtype))
        return pool_patches(tokens, self.config.pool_stride).flatten(1, 2)

    def embed_inputs(
        self, input_ids: Tensor, pixel_values: Tensor | None = None, vision_features: Tensor | None = None
    ) -> Tensor:
        """The LM's input embeddings [B, L, H] with the video's tokens at the placeholders."""
        if self.config.video_token_id is None:
            raise ValueError("config.video_token_id is not set: build the model with from_parts(..., tokenizer)")
        slots = input_ids == self.config.video_token_id
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None and vision_features is None:
            if slots.any():
                raise ValueError("the prompt holds video placeholders but no frames were given")
            return embeds
        visual = self.encode_video(pixel_values, vision_features=vision_features)
        counts = slots.sum(dim=1)
        if (counts != visual.shape[1]).any():
            frames = visual.shape[1] // self.config.tokens_per_frame
            raise ValueError(
                f"each sequence needs {visual.shape[1]} video placeholders ({frames} frames x "
                f"{self.config.tokens_per_frame}), got {counts.tolist()}: expand them with expand_placeholder"
            )
        return embeds.masked_scatter(slots[..., None], visual.to(embeds.dtype))

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        vision_features: Tensor | None = None,
        **lm_kwargs,
    ):
        """The LM's output (loss when `labels` are given: -100 where nothing is to be learned)."""
        embeds = self.embed_inputs(input_ids, pixel_values, vision_features)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        vision_features: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """The LM's `generate` on the spliced embeddings; returns the new tokens only."""
        embeds = self.embed_inputs(input_ids, pixel_values, vision_features)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
