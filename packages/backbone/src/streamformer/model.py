"""StreamFormer: a SigLIP ViT turned into a causal, streamable video backbone.

Each block is divided space-time attention run in the order temporal -> spatial -> MLP, all
pre-norm residual:

    x = x + tanh(gate) * temporal_dense(TemporalAttention(temporal_layernorm(x)))   # across frames, causal
    x = x + SpatialAttention(layernorm_before(x))                                  # within a frame, LoRA
    x = x + MLP(layernorm_after(x))

The gate starts at 0, so a freshly initialised StreamFormer is SigLIP applied frame by frame.
Temporal attention is the only place where frames meet; with a `TemporalKVCache` a new frame costs
one image forward plus attention over the cached frames of each layer.

Hidden states are laid out [B, T, N, D] (frame-major) throughout. Module and parameter names
follow the original checkpoint, so its state dict loads key for key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
    SiglipTextModel,
    SiglipVisionConfig,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead
from transformers.utils import ModelOutput

from .cache import TemporalKVCache, check_window, temporal_attention_mask
from .config import StreamFormerConfig

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


# ---------------------------------------------------------------------------------------------
# Outputs


@dataclass
class StreamFormerVisionOutput(ModelOutput):
    """Features of the frames given to one call.

    Args:
        last_hidden_state: spatial features [B, T, N, D] (after `post_layernorm`).
        pooler_output: temporal features [B, T, D], one attention-pooled vector per frame.
        global_output: global feature [B, D], the last frame's pooled vector; by causality it has
            seen the whole clip (or, when streaming, the whole stream within the window).
        hidden_states: with `output_hidden_states`, the embedding output and each block's output,
            [B, T, N, D] each (before `post_layernorm`).
    """

    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None
    global_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class StreamFormerOutput(ModelOutput):
    """Video-text similarities of `StreamFormerModel` (SigLIP style, sigmoid loss)."""

    loss: Tensor | None = None
    logits_per_video: Tensor | None = None
    logits_per_text: Tensor | None = None
    video_embeds: Tensor | None = None
    text_embeds: Tensor | None = None
    vision_model_output: StreamFormerVisionOutput | None = None


# ---------------------------------------------------------------------------------------------
# Temporal context: which frames this call holds and what they may attend to


@dataclass
class TemporalContext:
    """Frame bookkeeping shared by every block of one forward call.

    Build it with `StreamFormerVisionModel.temporal_context`; pass it to `embed` and
    `forward_layers` (and keep it across several `forward_layers` calls on block slices).
    """

    frames: Tensor  # [T] absolute frame indices of this call's frames, CPU long
    clip_length: int | None  # T for an offline clip, None while streaming with a cache
    causal: bool
    cache: TemporalKVCache | None = None
    max_frames: int | None = None
    sink_frames: int = 0

    def keys_values(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        """Keys, values, boolean mask and `is_causal` flag for one layer's temporal attention."""
        if self.cache is not None:
            return (*self.cache.update(layer, key, value, self.frames), False)
        if self.max_frames is not None:
            mask = temporal_attention_mask(self.frames, self.frames, self.max_frames, self.sink_frames)
            return key, value, mask.to(key.device), False
        return key, value, None, self.causal


# ---------------------------------------------------------------------------------------------
# Building blocks


# CUDA's flash and memory-efficient SDPA kernels put the batch on a grid dimension of at most
# 65,535 blocks and fail above it. Temporal attention batches B x N sequences (one per patch),
# which passes that at 335 clips of 224 px, so larger batches are attended in slices.
SDPA_MAX_BATCH = 65_535


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout: float = 0.0,
    implementation: str = "sdpa",
) -> Tensor:
    """Scaled dot-product attention on [..., heads, L, head_dim]; `mask` is boolean, True = attend."""
    # One query per sequence (a streamed frame's temporal attention) is memory-bound: on CPU two
    # plain matmuls read the cached keys/values faster than the flash kernel does.
    single_query_on_cpu = query.shape[-2] == 1 and query.device.type == "cpu"
    if implementation == "sdpa" and not single_query_on_cpu:
        # Slices of at most SDPA_MAX_BATCH sequences: see its comment.
        parts = zip(*(x.split(SDPA_MAX_BATCH) for x in (query, key, value)), strict=True)
        outs = [
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal) for q, k, v in parts
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    if single_query_on_cpu:
        # The query is a strided slice of the fused qkv output: a batched matmul on it is 3x slower
        # in fp32 than on a contiguous copy, which costs one small [S, heads, 1, head_dim] write.
        query = query.contiguous()
    scores = (query @ key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    if is_causal:
        mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype), dropout)
    return probs @ value


class Namespace(nn.Module):
    """A container that only adds one level to parameter names (`attention.qkv`, `output.dense`),
    so that the original checkpoint's keys map one to one."""

    def __init__(self, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample during training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)


def lora_linear(base: nn.Linear, rank: int, alpha: float) -> LoraLinear:
    """Wrap a Linear with a peft LoRA adapter (A ~ N(0, 0.02) and B = 0 after `_init_weights`)."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none")
    layer = LoraLinear(base, "default", config=config, r=rank, lora_alpha=alpha)
    # transformers initialises children before parents and never re-initialises a tensor, so
    # the zero init of B must be decided on B itself (see `_init_weights`).
    layer.lora_B["default"].zero_init = True
    return layer


class StreamFormerSelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (`attention.qkv`, `output.dense`)."""

    def __init__(self, config: StreamFormerConfig, lora: bool = False) -> None:
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        qkv, dense = nn.Linear(dim, 3 * dim, bias=config.qkv_bias), nn.Linear(dim, dim)
        if lora:
            qkv, dense = (
                lora_linear(qkv, config.lora_rank, config.lora_alpha),
                lora_linear(dense, config.lora_rank, config.lora_alpha),
            )
        self.attention = Namespace(qkv=qkv)
        self.output = Namespace(dense=dense)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[S, L, D] -> query, key, value [S, heads, L, head_dim]."""
        s, length, _ = x.shape
        qkv = self.attention.qkv(x).view(s, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def project_output(self, x: Tensor) -> Tensor:
        """[S, heads, L, head_dim] -> [S, L, D]."""
        return self.output_dropout(self.output.dense(x.transpose(1, 2).flatten(2)))

    def forward(self, x: Tensor, implementation: str = "sdpa") -> Tensor:
        """Full (bidirectional) attention over the L tokens of each of the S sequences in x [S, L, D]."""
        q, k, v = self.project_qkv(x)
        dropout = self.dropout if self.training else 0.0
        return self.project_output(attention(q, k, v, dropout=dropout, implementation=implementation))


class StreamFormerLayer(nn.Module):
    """One divided space-time block: gated causal temporal attention, spatial attention, MLP."""

    def __init__(self, config: StreamFormerConfig, layer_idx: int, drop_path: float = 0.0) -> None:
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.layer_idx = layer_idx
        self.temporal_layernorm = nn.LayerNorm(dim, eps=eps)
        self.temporal_attention = StreamFormerSelfAttention(config)
        self.temporal_dense = nn.Linear(dim, dim)
        self.temporal_attention_gating = nn.Parameter(torch.zeros(()))
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.attention = StreamFormerSelfAttention(config, lora=config.add_lora_spatial)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)
        self.intermediate = Namespace(dense=nn.Linear(dim, config.intermediate_size))
        self.output = Namespace(dense=nn.Linear(config.intermediate_size, dim))
        self.activation = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path)

    def temporal(self, x: Tensor, context: TemporalContext, implementation: str) -> Tensor:
        """The gated temporal branch, each patch attending over its own past: [B, T, N, D] -> [B, T, N, D]."""
        b, t, n, d = x.shape
        # Contiguous on purpose: a strided [B*N, T, D] view sends bf16 Linear down a batched
        # matmul that materialises the weight once per patch (measured 10x slower on CPU).
        tokens = self.temporal_layernorm(x).transpose(1, 2).contiguous().view(b * n, t, d)
        q, k, v = self.temporal_attention.project_qkv(tokens)
        k, v, mask, is_causal = context.keys_values(self.layer_idx, k, v)
        dropout = self.temporal_attention.dropout if self.training else 0.0
        out = attention(q, k, v, mask, is_causal, dropout, implementation)
        if self.training or torch.is_grad_enabled():
            out = self.temporal_dense(self.temporal_attention.project_output(out))
            out = torch.tanh(self.temporal_attention_gating) * out
        else:
            out = F.linear(out.transpose(1, 2).flatten(2), *self.fused_temporal_output())
        return out.view(b, n, t, d).transpose(1, 2)

    def fused_temporal_output(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of `tanh(gate) * temporal_dense(output.dense(x))` as one affine map.

        Used in eval mode without gradients: the two projections have no nonlinearity between them,
        so one D x D product per token replaces two. Rebuilt whenever a source tensor changes (in
        place, by `load_state_dict`, or moved by `.to()`); never saved, so checkpoints keep the
        original keys and training the two separate layers.
        """
        out, dense = self.temporal_attention.output.dense, self.temporal_dense
        sources = (out.weight, out.bias, dense.weight, dense.bias, self.temporal_attention_gating)
        # Tensors made under inference_mode keep no version counter; they change only by replacement.
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device) for t in sources)
        if getattr(self, "_fused_key", None) != key:
            exact = torch.float32 if out.weight.device.type == "mps" else torch.float64  # MPS has no float64
            with torch.no_grad():
                w_out, b_out, w_dense, b_dense, gate = (t.to(exact) for t in sources)
                scale = torch.tanh(gate)
                weight = scale * (w_dense @ w_out)
                bias = scale * (w_dense @ b_out + b_dense)
            self._fused = (weight.to(out.weight.dtype), bias.to(out.bias.dtype))
            self._fused_key = key
        return self._fused

    def forward(self, x: Tensor, context: TemporalContext, implementation: str = "sdpa") -> Tensor:
        b, t, n, d = x.shape
        x = x + self.drop_path(self.temporal(x, context, implementation))
        spatial = self.attention(self.layernorm_before(x).view(b * t, n, d), implementation)
        x = x + self.drop_path(spatial.view(b, t, n, d))
        hidden = self.dropout(self.activation(self.intermediate.dense(self.layernorm_after(x))))
        mlp = self.dropout(self.output.dense(hidden))
        return x + self.drop_path(mlp)


class StreamFormerPatchEmbeddings(nn.Module):
    def __init__(self, config: StreamFormerConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)

    def forward(self, frames: Tensor) -> Tensor:
        """[F, C, H, W] -> [F, N, D], patches in row-major order."""
        return self.projection(frames).flatten(2).transpose(1, 2)


class StreamFormerEmbeddings(nn.Module):
    """Patch embedding + spatial position (shared by frames) + time embedding (shared by patches)."""

    def __init__(self, config: StreamFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embeddings = StreamFormerPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size))
        self.time_embeddings = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def spatial_positions(self, grid_h: int, grid_w: int) -> Tensor:
        """[1, grid_h * grid_w, D]; the learned square table resized (bicubic) for other resolutions."""
        table = self.position_embeddings
        side = math.isqrt(table.shape[1])
        if (grid_h, grid_w) == (side, side):
            return table
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        # (grid_h, grid_w) in this order: rows of the token layout are image rows (the original
        # passed them swapped, transposing the table for non-square inputs).
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", antialias=True, align_corners=False)
        return grid.to(table.dtype).flatten(2).transpose(1, 2)

    def time_rows(self, frames: Tensor, clip_length: int | None) -> Tensor:
        """Row of the time-embedding table used by each absolute frame index."""
        rows = self.config.num_frames
        if self.config.temporal_position == "clamp":
            return frames.clamp(max=rows - 1)
        if clip_length is not None and clip_length > rows:  # "interpolate": the original's offline rule
            return frames * rows // clip_length
        if int(frames.max()) >= rows:
            raise ValueError(
                f"temporal_position='interpolate' cannot stream past num_frames={rows} frames "
                f"(got frame {int(frames.max())}): later frames would change the time embeddings of "
                "earlier ones. Use temporal_position='clamp' to stream longer."
            )
        return frames

    def forward(self, pixel_values: Tensor, context: TemporalContext) -> Tensor:
        b, t, _, h, w = pixel_values.shape
        patch = self.config.patch_size
        x = self.patch_embeddings(pixel_values.flatten(0, 1)) + self.spatial_positions(h // patch, w // patch)
        rows = self.time_rows(context.frames, context.clip_length).to(x.device)
        return self.dropout(x.view(b, t, -1, x.shape[-1]) + self.time_embeddings[0, rows][None, :, None, :])


class StreamFormerEncoder(nn.Module):
    def __init__(self, config: StreamFormerConfig) -> None:
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layer = nn.ModuleList(StreamFormerLayer(config, i, rate) for i, rate in enumerate(rates))


def check_pixel_values(pixel_values: Tensor, config: StreamFormerConfig) -> None:
    """Raise a clear error for input the model cannot take (instead of a wrong shape later)."""
    if not isinstance(pixel_values, Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 5:
        raise ValueError(f"pixel_values must be [B, T, C, H, W], got shape {tuple(pixel_values.shape)}")
    b, t, c, h, w = pixel_values.shape
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be floating point in [-1, 1], got {pixel_values.dtype} (preprocess first)")
    if b == 0 or t == 0:
        raise ValueError(f"pixel_values has no frames: shape {tuple(pixel_values.shape)}")
    if c != config.num_channels:
        raise ValueError(f"expected {config.num_channels} channels in dim 2 of [B, T, C, H, W], got {c}")
    if h % config.patch_size or w % config.patch_size:
        raise ValueError(f"resolution {h}x{w} is not divisible by the patch size {config.patch_size}")


# ---------------------------------------------------------------------------------------------
# Models


class StreamFormerPreTrainedModel(PreTrainedModel):
    config: StreamFormerConfig
    config_class = StreamFormerConfig
    base_model_prefix = "timesformer"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    _supports_sdpa = True
    # Attention dispatches on `config._attn_implementation` at each call (see `attention`), so
    # `set_attn_implementation("eager" | "sdpa")` works; transformers cannot infer that from source.
    _can_set_attn_implementation_cached_value = True
    _no_split_modules = ["StreamFormerEmbeddings", "StreamFormerLayer", "SiglipMultiheadAttentionPoolingHead"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "zero_init", False):  # LoRA B: the adapter starts as the identity update
            init.zeros_(module.weight)
            return
        super()._init_weights(module)  # Linear/Conv N(0, initializer_range), zero bias; LayerNorm 1/0
        std = self.config.initializer_range
        if isinstance(module, StreamFormerEmbeddings):
            init.normal_(module.position_embeddings, std=std)
            init.normal_(module.time_embeddings, std=std)
        elif isinstance(module, StreamFormerLayer):  # 0 by default: the temporal branch starts switched off
            init.constant_(module.temporal_attention_gating, self.config.temporal_gate_init)
        elif isinstance(module, SiglipMultiheadAttentionPoolingHead):
            init.normal_(module.probe, std=std)
        elif isinstance(module, StreamFormerModel):
            init.constant_(module.logit_scale, math.log(10.0))
            init.constant_(module.logit_bias, -2.0)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, allow_partial: bool = False, **kwargs):
        """Load our format; convert an original StreamFormer checkpoint on the fly (vision model only).

        Refuses, naming the command to run, a SigLIP or TimeSformer checkpoint, and refuses weights
        that do not cover the model (missing, unexpected or reshaped keys, all named) unless
        `allow_partial=True`. With an original checkpoint, `merge_lora=True` folds LoRA in.
        """
        from .checkpoints import check_weights_cover, convert_if_original  # they import this module

        converted = convert_if_original(cls, pretrained_model_name_or_path, kwargs, allow_partial)
        if converted is not None:
            return (converted, {}) if kwargs.get("output_loading_info") else converted
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        check_weights_cover(model, info, pretrained_model_name_or_path, allow_partial)
        return (model, info) if with_info else model

    @property
    def attention_implementation(self) -> str:
        implementation = self.config._attn_implementation or "sdpa"
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"StreamFormer supports attn_implementation in {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
        return implementation


class StreamFormerVisionModel(StreamFormerPreTrainedModel):
    """The video backbone. `forward` runs a clip offline, or the next chunk of a stream with a cache.

    Stages are public for downstream models that need more than the final features:
    `temporal_context` -> `embed` -> `forward_layers` (any slice of blocks) -> `post_layernorm`
    -> `forward_head`.
    """

    def __init__(self, config: StreamFormerConfig) -> None:
        super().__init__(config)
        self.embeddings = StreamFormerEmbeddings(config)
        self.encoder = StreamFormerEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        head_config = SiglipVisionConfig(
            hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
        )
        self.head = SiglipMultiheadAttentionPoolingHead(head_config)
        self.post_init()

    def new_cache(
        self,
        batch_size: int = 1,
        max_frames: int | None = None,
        sink_frames: int = 0,
        start_frame: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TemporalKVCache:
        """An empty cache for streaming; see `TemporalKVCache`."""
        if not self.config.enable_causal_temporal:
            raise ValueError("this model's temporal attention is bidirectional (enable_causal_temporal=False): it cannot stream")
        return TemporalKVCache(self.config.num_hidden_layers, batch_size, max_frames, sink_frames, start_frame, dtype, device)

    def temporal_context(
        self, new_frames: int, cache: TemporalKVCache | None = None, max_frames: int | None = None, sink_frames: int = 0
    ) -> TemporalContext:
        """Frame indices and attention rule for a call on `new_frames` new frames."""
        causal = self.config.enable_causal_temporal
        if cache is None:
            check_window(max_frames, sink_frames)
            if max_frames is not None and not causal:
                raise ValueError("a window (max_frames) needs causal temporal attention")
            return TemporalContext(torch.arange(new_frames), new_frames, causal, None, max_frames, sink_frames)
        if (max_frames, sink_frames) != (None, 0) and (max_frames, sink_frames) != (cache.max_frames, cache.sink_frames):
            raise ValueError("with a cache, the window is the cache's: set max_frames/sink_frames in new_cache()")
        if not causal:
            raise ValueError("a bidirectional model (enable_causal_temporal=False) cannot stream with a cache")
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(
                "streaming with a cache is for inference: run it under torch.inference_mode() or torch.no_grad() "
                "(train with the offline forward on whole clips)"
            )
        frames = torch.arange(cache.next_frame, cache.next_frame + new_frames)
        return TemporalContext(frames, None, True, cache, cache.max_frames, cache.sink_frames)

    def embed(self, pixel_values: Tensor, context: TemporalContext) -> Tensor:
        """Pixels [B, T, C, H, W] in [-1, 1] -> embedded tokens [B, T, N, D]."""
        check_pixel_values(pixel_values, self.config)
        if context.cache is not None and pixel_values.shape[0] != context.cache.batch_size:
            raise ValueError(f"cache was made for batch size {context.cache.batch_size}, got {pixel_values.shape[0]}")
        return self.embeddings(pixel_values, context)

    def forward_layers(self, hidden_states: Tensor, context: TemporalContext, start: int = 0, end: int | None = None) -> Tensor:
        """Run blocks `start` .. `end - 1` on [B, T, N, D] tokens."""
        implementation = self.attention_implementation
        for layer in self.encoder.layer[start:end]:
            hidden_states = layer(hidden_states, context, implementation)
        return hidden_states

    def forward_head(self, last_hidden_state: Tensor) -> Tensor:
        """Attention-pool each frame: [B, T, N, D] -> [B, T, D]."""
        b, t, n, d = last_hidden_state.shape
        return self.head(last_hidden_state.reshape(b * t, n, d)).view(b, t, d)

    def forward(
        self,
        pixel_values: Tensor,
        cache: TemporalKVCache | None = None,
        max_frames: int | None = None,
        sink_frames: int = 0,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> StreamFormerVisionOutput | tuple:
        """Encode frames [B, T, C, H, W] (values in [-1, 1]).

        Without `cache`: the T frames are a clip starting at frame 0, optionally under a window of
        `max_frames` frames with `sink_frames` sinks. With `cache`: they are the next T frames of
        the stream the cache holds, and the outputs cover these T frames only.
        """
        check_pixel_values(pixel_values, self.config)  # before anything reads its shape
        context = self.temporal_context(pixel_values.shape[1], cache, max_frames, sink_frames)
        hidden = self.embed(pixel_values, context)
        all_hidden = [hidden] if output_hidden_states else None
        if output_hidden_states:
            for i in range(len(self.encoder.layer)):
                hidden = self.forward_layers(hidden, context, i, i + 1)
                all_hidden.append(hidden)
        else:
            hidden = self.forward_layers(hidden, context)
        last = self.post_layernorm(hidden)
        pooled = self.forward_head(last)
        output = StreamFormerVisionOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            global_output=pooled[:, -1],
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )
        return output if return_dict else output.to_tuple()

    def temporal_gates(self) -> Tensor:
        """The raw temporal gate of every block, [num_layers] (each branch is scaled by tanh(gate))."""
        return torch.stack([layer.temporal_attention_gating.detach() for layer in self.encoder.layer])

    @torch.no_grad()
    def disable_temporal(self) -> StreamFormerVisionModel:
        """Zero and freeze every temporal gate, in place: no block mixes frames any more.

        The time embeddings stay, so frame t is encoded alone, as an image with the time-embedding
        row of its position (the "no temporal attention" ablation of pretraining and OAD)."""
        for layer in self.encoder.layer:
            layer.temporal_attention_gating.zero_()
            layer.temporal_attention_gating.requires_grad_(False)
        return self

    def merge_lora(self) -> StreamFormerVisionModel:
        """Fold the spatial LoRA adapters into their base weights (W <- W + scale * B @ A), in place."""
        for layer in self.encoder.layer:
            for holder, name in ((layer.attention.attention, "qkv"), (layer.attention.output, "dense")):
                module = getattr(holder, name)
                if isinstance(module, LoraLayer):
                    module.merge()
                    setattr(holder, name, module.get_base_layer())
        self.config.add_lora_spatial = False
        return self


class StreamFormerModel(StreamFormerPreTrainedModel):
    """StreamFormer video tower + SigLIP text tower + the SigLIP logit scale and bias.

    Parameter names follow the original multitask wrapper (`timesformer.*`, `logit_scale`,
    `logit_bias`); the text tower is transformers' `SiglipTextModel` under `text_encoder.*`.
    """

    input_modalities = ("video", "text")

    def __init__(self, config: StreamFormerConfig) -> None:
        super().__init__(config)
        if config.text_config is None:
            raise ValueError(
                "StreamFormerModel needs config.text_config (a SiglipTextConfig); use StreamFormerVisionModel for video alone"
            )
        self.timesformer = StreamFormerVisionModel(config)
        self.text_encoder = SiglipTextModel(config.text_config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))
        self.post_init()

    def get_video_features(self, pixel_values: Tensor, **kwargs) -> Tensor:
        """Global video embedding [B, D] (unnormalised): the last frame's pooled feature."""
        return self.timesformer(pixel_values, **kwargs).global_output

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Pooled text embedding [B, D] (unnormalised)."""
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        return_loss: bool = False,
    ) -> StreamFormerOutput:
        vision = self.timesformer(pixel_values)
        video = F.normalize(vision.global_output, dim=-1)
        text = F.normalize(self.get_text_features(input_ids, attention_mask), dim=-1)
        logits_per_text = text @ video.t() * self.logit_scale.exp() + self.logit_bias
        loss = None
        if return_loss:
            labels = 2 * torch.eye(len(text), device=text.device, dtype=text.dtype) - 1
            loss = -F.logsigmoid(labels * logits_per_text).sum() / len(text)
        return StreamFormerOutput(
            loss=loss,
            logits_per_video=logits_per_text.t(),
            logits_per_text=logits_per_text,
            video_embeds=video,
            text_embeds=text,
            vision_model_output=vision,
        )


AutoConfig.register(StreamFormerConfig.model_type, StreamFormerConfig)
AutoModel.register(StreamFormerConfig, StreamFormerVisionModel)
AutoModelForZeroShotImageClassification.register(StreamFormerConfig, StreamFormerModel)
