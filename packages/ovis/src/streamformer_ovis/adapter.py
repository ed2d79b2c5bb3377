"""A ViT-Adapter around the StreamFormer backbone: multi-scale maps res2..res5 for each frame.

The ViT-Adapter (Chen et al., 2023) gives a plain ViT the pyramid a dense head needs:

* a convolutional Spatial Prior Module (SPM) turns each frame into maps at strides 4, 8, 16
  and 32, projected to the ViT width D; the stride 8/16/32 tokens (plus a level embedding) form
  the query `c`;
* the ViT blocks run in 4 consecutive groups (`interaction_indexes`). After each group an
  Extractor updates `c` from the ViT tokens with multi-scale deformable attention (one level: the
  ViT token grid) and a ConvFFN; an optional Injector (off by default) writes `c` back into the ViT
  tokens before each group;
* the outputs are `c` reshaped to maps (stride 4 from a transposed conv on the stride-8 map plus
  the SPM's own stride-4 map), plus each group's ViT output resized to its level, batch-normed.

Here the ViT is StreamFormer: the blocks are divided space-time blocks with causal temporal
attention over [B, T, N, D] tokens, run through `StreamFormerVisionModel.forward_layers`. Every
other part works frame by frame on the B·T frames, so the adapter streams exactly as the
backbone does: pass a cache from `StreamFormerAdapter.new_cache` and feed frames in any chunks;
the outputs equal those of the offline clip (under the same `temporal_window`).

Deformable attention is transformers' pure-PyTorch `MSDeformAttn` of Mask2Former (bilinear
`grid_sample`), run in fp32 whatever the autocast outside: sampling locations in bf16 are off by
a quarter of a token on a 64-wide grid.

The SPM and the output norms are `nn.BatchNorm2d`; under DDP convert them with
`nn.SyncBatchNorm.convert_sync_batchnorm` (the Lightning module does), as the original uses
SyncBN. In eval mode they use their running statistics, so every frame is processed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

from streamformer.cache import TemporalKVCache
from streamformer.model import StreamFormerVisionModel

LEVELS = ("res2", "res3", "res4", "res5")
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
SIZE_DIVISIBILITY = 32  # the stride of the coarsest level
QUERY_STRIDES = (8, 16, 32)  # the SPM levels that form the query c
NUM_INTERACTIONS = 4  # one ViT group per output level
LAYER_NORM_EPS = 1e-6

Shapes = list[tuple[int, int]]


# ---------------------------------------------------------------------------------------------
# Configuration and shape arithmetic


@dataclass
class AdapterConfig:
    """Hyper-parameters of the adapter; the defaults are ViT-Adapter-B's.

    Args:
        conv_inplane: channels of the SPM stem (stride 4); strides 8/16/32 have 2x, 4x, 4x that.
        n_points: sampling points per head and level of the deformable attention.
        deform_num_heads: heads of the deformable attention; must divide the ViT width.
        init_values: initial value of the injector's per-channel gate gamma.
        interaction_indexes: 4 inclusive [start, end] ranges of ViT blocks, consecutive from block 0
            to the last block. None: the blocks split into 4 equal groups (see
            `default_interaction_indexes`).
        with_cffn: a ConvFFN after each extractor's attention.
        cffn_ratio: hidden width of the ConvFFN as a fraction of the ViT width.
        add_vit_feature: add each group's ViT output (resized) to its level of the output.
        use_extra_extractor: 2 more extractors after the last interaction.
        with_injector: inject the SPM query into the ViT tokens before each group (off in the
            original recipe).
        temporal_window: frames the backbone's temporal attention sees (the current one included),
            offline and in the cache made by `new_cache`; None = unbounded.
        freeze_backbone: freeze the backbone except its spatial LoRA parameters.
    """

    conv_inplane: int = 64
    n_points: int = 4
    deform_num_heads: int = 12
    init_values: float = 1e-6
    interaction_indexes: list[list[int]] | None = None
    with_cffn: bool = True
    cffn_ratio: float = 0.25
    add_vit_feature: bool = True
    use_extra_extractor: bool = True
    with_injector: bool = False
    temporal_window: int | None = None
    freeze_backbone: bool = True

    def __post_init__(self) -> None:
        for name in ("conv_inplane", "n_points", "deform_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.cffn_ratio > 0:
            raise ValueError(f"cffn_ratio must be positive, got {self.cffn_ratio}")
        if self.temporal_window is not None and (not isinstance(self.temporal_window, int) or self.temporal_window < 1):
            raise ValueError(f"temporal_window must be None or a positive integer, got {self.temporal_window!r}")
        if self.interaction_indexes is not None:
            self.interaction_indexes = [list(pair) for pair in self.interaction_indexes]


def default_interaction_indexes(num_layers: int) -> list[list[int]]:
    """Blocks 0..num_layers-1 in 4 consecutive inclusive ranges, as equal as possible (the earlier
    groups get the extra block): 12 -> [[0, 2], [3, 5], [6, 8], [9, 11]]."""
    if num_layers < NUM_INTERACTIONS:
        raise ValueError(
            f"the adapter needs at least {NUM_INTERACTIONS} ViT blocks (one per group), the backbone has {num_layers}"
        )
    size, extra = divmod(num_layers, NUM_INTERACTIONS)
    indexes, start = [], 0
    for i in range(NUM_INTERACTIONS):
        end = start + size + (i < extra) - 1
        indexes.append([start, end])
        start = end + 1
    return indexes


def check_interaction_indexes(indexes: list[list[int]], num_layers: int) -> None:
    """4 inclusive ranges that cover blocks 0..num_layers-1 in order, each at least one block."""
    ok = len(indexes) == NUM_INTERACTIONS and all(len(pair) == 2 for pair in indexes)
    if ok:
        expected_start = 0
        for start, end in indexes:
            ok &= start == expected_start and end >= start
            expected_start = end + 1
        ok &= expected_start == num_layers
    if not ok:
        raise ValueError(
            f"interaction_indexes must be {NUM_INTERACTIONS} inclusive [start, end] ranges covering blocks 0..{num_layers - 1} "
            f"in order (e.g. {default_interaction_indexes(max(num_layers, NUM_INTERACTIONS))}), got {indexes}"
        )


def query_level_shapes(height: int, width: int) -> Shapes:
    """(h, w) of the SPM levels that form the query (strides 8, 16, 32) for H x W frames."""
    return [(height // s, width // s) for s in QUERY_STRIDES]


def query_token_count(height: int, width: int) -> int:
    """Tokens of the SPM query c: 1029 for 224 x 224 frames (784 + 196 + 49)."""
    return sum(h * w for h, w in query_level_shapes(height, width))


def output_shapes(height: int, width: int) -> dict[str, tuple[int, int]]:
    """(h, w) of each output level for H x W frames."""
    return {name: (height // s, width // s) for name, s in STRIDES.items()}


def reference_points(shapes: Shapes, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised (x, y) centres ((j + 0.5) / w, (i + 0.5) / h) of the tokens of every level, in
    row-major order, levels concatenated: [1, sum(h * w), 1, 2]."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((x.flatten(), y.flatten()), dim=-1))
    return torch.cat(points)[None, :, None].to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Building blocks


def reset_deformable_attention_(module: Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention) -> None:
    """Deformable DETR's initialisation: offsets start on a ring of directions (one per head),
    point k at k + 1 tokens out; uniform attention weights; xavier projections, zero biases."""
    with torch.no_grad():
        nn.init.zeros_(module.sampling_offsets.weight)
        thetas = torch.arange(module.n_heads, dtype=torch.float32) * (2.0 * math.pi / module.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(module.n_heads, 1, 1, 2)
        grid = grid.repeat(1, module.n_levels, module.n_points, 1)
        grid *= torch.arange(1, module.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        module.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(module.attention_weights.weight)
        nn.init.zeros_(module.attention_weights.bias)
        for linear in (module.value_proj, module.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)


class DeformableAttention(nn.Module):
    """transformers' pure-PyTorch multi-scale deformable attention, run in the dtype of its
    weights (fp32 in mixed precision training) with autocast off, its output cast back."""

    def __init__(self, dim: int, num_heads: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"deform_num_heads ({num_heads}) must divide the ViT width ({dim})")
        self.attn = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(dim, num_heads, n_levels, n_points)
        reset_deformable_attention_(self.attn)

    def forward(self, query: Tensor, reference: Tensor, value: Tensor, shapes: Shapes) -> Tensor:
        """query [S, Nq, D] at `reference` [1 or S, Nq, levels, 2] over value [S, sum(h * w), D]."""
        dtype = self.attn.value_proj.weight.dtype
        sizes = torch.tensor([0] + [h * w for h, w in shapes[:-1]], device=value.device)
        with torch.autocast(query.device.type, enabled=False):
            out, _ = self.attn(
                hidden_states=query.to(dtype),
                encoder_hidden_states=value.to(dtype),
                reference_points=reference.to(dtype).expand(query.shape[0], -1, -1, -1),
                spatial_shapes_list=shapes,
                level_start_index=sizes.cumsum(0),
            )
        return out.to(query.dtype)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """Frames [F, 3, H, W] -> c1 map [F, D, H/4, W/4] and c2, c3, c4 tokens [F, h * w, D] at
    strides 8, 16, 32 (row-major), all projected to the ViT width D by 1x1 convolutions."""

    def __init__(self, inplane: int, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *conv_bn_relu(3, inplane, 2),
            *conv_bn_relu(inplane, inplane, 1),
            *conv_bn_relu(inplane, inplane, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*conv_bn_relu(inplane, 2 * inplane, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplane, 4 * inplane, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplane, 4 * inplane, 2))
        self.fc1 = nn.Conv2d(inplane, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplane, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplane, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplane, dim, 1)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = self.stem(frames)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tokens = [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return self.fc1(c1), *tokens


class ConvFFN(nn.Module):
    """Linear -> 3x3 depth-wise conv on each level's map -> GELU -> Linear, on tokens [S, L, D]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        x = self.fc1(x)
        s, _, c = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        maps = [part.transpose(1, 2).reshape(s, c, h, w) for part, (h, w) in zip(parts, shapes, strict=True)]
        x = torch.cat([self.dwconv(m).flatten(2).transpose(1, 2) for m in maps], dim=1)
        return self.fc2(self.act(x))


class Extractor(nn.Module):
    """c <- c + MSDeformAttn(LN(c) at its token centres, over LN(x) on the ViT grid);
    then c <- c + ConvFFN(LN(c))."""

    def __init__(self, dim: int, config: AdapterConfig) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = DeformableAttention(dim, config.deform_num_heads, 1, config.n_points)
        self.ffn = self.ffn_norm = None
        if config.with_cffn:
            self.ffn = ConvFFN(dim, max(1, int(dim * config.cffn_ratio)))
            self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, c: Tensor, reference: Tensor, x: Tensor, grid: tuple[int, int], c_shapes: Shapes) -> Tensor:
        c = c + self.attn(self.query_norm(c), reference, self.feat_norm(x), [grid])
        if self.ffn is not None:
            c = c + self.ffn(self.ffn_norm(c), c_shapes)
        return c


class Injector(nn.Module):
    """x <- x + gamma * MSDeformAttn(LN(x) at the ViT token centres, over LN(c) on the 3 SPM levels)."""

    def __init__(self, dim: int, config: AdapterConfig) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = DeformableAttention(dim, config.deform_num_heads, len(QUERY_STRIDES), config.n_points)
        self.gamma = nn.Parameter(torch.full((dim,), float(config.init_values)))

    def forward(self, x: Tensor, reference: Tensor, c: Tensor, c_shapes: Shapes) -> Tensor:
        return x + self.gamma * self.attn(self.query_norm(x), reference, self.feat_norm(c), c_shapes)


class Interaction(nn.Module):
    """The adapter modules around one group of ViT blocks: injector (optional), extractor, and
    for the last group the extra extractors."""

    def __init__(self, dim: int, config: AdapterConfig, extra_extractors: int = 0) -> None:
        super().__init__()
        self.injector = Injector(dim, config) if config.with_injector else None
        self.extractor = Extractor(dim, config)
        self.extra_extractors = nn.ModuleList(Extractor(dim, config) for _ in range(extra_extractors))


# ---------------------------------------------------------------------------------------------
# The adapter


class StreamFormerAdapter(nn.Module):
    """StreamFormer + ViT-Adapter: frames [B, T, 3, H, W] -> {"res2": ..., "res5": ...} maps
    [B·T, D, H/stride, W/stride] (frames flattened frame-major within a clip, D the ViT width).

    With `freeze_backbone` every backbone parameter is frozen except the spatial LoRA ("lora_"
    in the name). The backbone's pooling head and `post_layernorm` are never used here and are
    always frozen (so DDP finds no unused trainable parameter). `train()` puts the backbone in
    train mode too: it has LayerNorm only, so that switches its dropout and drop path (both 0 by
    default) and nothing else.
    """

    def __init__(self, backbone: StreamFormerVisionModel, config: AdapterConfig | None = None) -> None:
        super().__init__()
        config = config or AdapterConfig()
        bconfig = backbone.config
        dim, num_layers = bconfig.hidden_size, bconfig.num_hidden_layers
        indexes = config.interaction_indexes or default_interaction_indexes(num_layers)
        check_interaction_indexes(indexes, num_layers)
        if dim % config.deform_num_heads:
            raise ValueError(
                f"deform_num_heads ({config.deform_num_heads}) must divide the ViT width ({dim}); "
                "the default 12 is for ViT-B, set AdapterConfig(deform_num_heads=...)"
            )
        if config.temporal_window is not None and not bconfig.enable_causal_temporal:
            raise ValueError("temporal_window needs a backbone with causal temporal attention")
        self.config = replace(config, interaction_indexes=[list(pair) for pair in indexes])
        self.backbone = backbone
        self.dim = dim
        self.patch_size = bconfig.patch_size

        self.level_embed = nn.Parameter(torch.zeros(len(QUERY_STRIDES), dim))
        self.spm = SpatialPriorModule(config.conv_inplane, dim)
        extra = 2 if config.use_extra_extractor else 0
        self.interactions = nn.ModuleList(
            Interaction(dim, config, extra if i == NUM_INTERACTIONS - 1 else 0) for i in range(NUM_INTERACTIONS)
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleDict({name: nn.BatchNorm2d(dim) for name in LEVELS})
        self._init_adapter_weights()

        for name, param in backbone.named_parameters():
            unused = name.startswith(("head.", "post_layernorm."))
            frozen = config.freeze_backbone and "lora_" not in name
            if unused or frozen:
                param.requires_grad_(False)

    def _init_adapter_weights(self) -> None:
        """The original's initialisation, on the adapter's own modules only (never the backbone)."""
        for name, module in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():  # after the generic Linear init above, which it overrides
            if isinstance(module, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
                reset_deformable_attention_(module)
        nn.init.normal_(self.level_embed)

    @property
    def output_channels(self) -> int:
        """Channels of every output level: the ViT width."""
        return self.dim

    @property
    def strides(self) -> dict[str, int]:
        return dict(STRIDES)

    @property
    def interaction_indexes(self) -> list[list[int]]:
        return [list(pair) for pair in self.config.interaction_indexes]

    def new_cache(self, batch_size: int = 1, **kwargs) -> TemporalKVCache:
        """An empty backbone cache for streaming under `temporal_window` (kwargs: dtype, device,
        start_frame, ... of `StreamFormerVisionModel.new_cache`)."""
        return self.backbone.new_cache(batch_size, max_frames=self.config.temporal_window, **kwargs)

    def check_input(self, pixel_values: Tensor) -> None:
        """Raise a ValueError for frames the adapter cannot take."""
        if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 5:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a [B, T, 3, H, W] tensor, got {shape}")
        height, width = pixel_values.shape[-2:]
        if height < SIZE_DIVISIBILITY or width < SIZE_DIVISIBILITY or height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
            raise ValueError(
                f"the adapter needs H and W divisible by {SIZE_DIVISIBILITY} (its coarsest stride), got {height}x{width}: pad the frames"
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"resolution {height}x{width} is not divisible by the backbone's patch size {self.patch_size}")

    def forward(self, pixel_values: Tensor, cache: TemporalKVCache | None = None) -> dict[str, Tensor]:
        """Feature maps of the T frames in `pixel_values` [B, T, 3, H, W] (values in [-1, 1]).

        Without `cache` the frames are a clip starting at frame 0 (under `temporal_window`); with
        a cache from `new_cache` they are the next frames of its stream (the cache's window rules),
        and the outputs cover these frames only. Streaming must run under `torch.no_grad()` or
        `torch.inference_mode()` (the backbone refuses otherwise) and in eval mode to match the
        offline outputs (BatchNorm then uses its running statistics).
        """
        self.check_input(pixel_values)
        b, t, _, height, width = pixel_values.shape
        window = None if cache is not None else self.config.temporal_window
        context = self.backbone.temporal_context(t, cache, max_frames=window)
        x = self.backbone.embed(pixel_values, context)  # [B, T, N, D]
        grid = (height // self.patch_size, width // self.patch_size)
        n, d = x.shape[2], x.shape[3]
        if n != grid[0] * grid[1]:
            raise ValueError(f"the backbone made {n} tokens per frame, expected a {grid[0]}x{grid[1]} grid")

        frames = b * t
        c1, c2, c3, c4 = self.spm(pixel_values.flatten(0, 1))
        c_shapes = query_level_shapes(height, width)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        c_reference = reference_points(c_shapes, c.device)
        x_reference = reference_points([grid], c.device).expand(-1, -1, len(c_shapes), -1)

        vit_maps = []
        for interaction, (start, end) in zip(self.interactions, self.config.interaction_indexes, strict=True):
            if interaction.injector is not None:
                x = interaction.injector(x.reshape(frames, n, d), x_reference, c, c_shapes).view(b, t, n, d)
            x = self.backbone.forward_layers(x, context, start, end + 1)
            tokens = x.reshape(frames, n, d)
            for extractor in (interaction.extractor, *interaction.extra_extractors):
                c = extractor(c, c_reference, tokens, grid, c_shapes)
            vit_maps.append(tokens.transpose(1, 2).reshape(frames, d, *grid))

        c2, c3, c4 = (
            part.transpose(1, 2).reshape(frames, d, h, w)
            for part, (h, w) in zip(c.split([h * w for h, w in c_shapes], dim=1), c_shapes, strict=True)
        )
        c1 = self.up(c2) + c1
        maps = [c1, c2, c3, c4]
        if self.config.add_vit_feature:
            maps = [level + resize(vit, level.shape[-2:]) for level, vit in zip(maps, vit_maps, strict=True)]
        return {name: self.norms[name](level) for name, level in zip(LEVELS, maps, strict=True)}


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of maps [F, C, h, w] to `size` (align_corners=False); identity when equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
