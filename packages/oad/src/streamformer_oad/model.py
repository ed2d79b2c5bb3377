"""MAT, the Memory-and-Anticipation Transformer (Wang et al., ICCV 2023), as an OAD head on frozen features.

One sample is `long_memory_num_samples` long-memory features followed by a work window of
`work_memory_length` features (oldest first). The graph, as the original MAT builds it:

    memory  = compress(feature_head_long(long))              # 16 queries read the long memory -> 8 or 16 tokens,
                                                             # then self-attention over them
    tokens  = [PE(feature_head_work(work)), PE(anticipation queries)]   # 32 + 8 tokens, positions 0..39
    output  = dec_modules(tokens, memory)                    # causal self-attention, cross-attention to memory
    future  = gen_layer(gen queries, [memory, output])       # 32 generated future tokens
    CCI:      output <- work_fusions[i](output, [memory, output, future])  # memory-anticipation circular
              future <- fut_fusions[0](final queries, [memory, output, future])  # interaction, i = 0, 1
    scores  = shared classifier on the 3 work representations and the 2 future ones

Every attention is post-norm (DETR style) and keeps only the top 3/4 of its logits per query (`knn`).
The long memory gets no positional encoding.

Tensors are batch-first [B, L, D] here; the original is sequence-first [L, B, D]. Nothing mixes
samples, so the layout changes only the indexing. Module and parameter names follow the original
`LSTR` module, so its `model_state_dict` loads key for key once the constant `pos_encoding.pe`
buffer (not part of this state dict) is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["gelu", "relu"]
# How the long-memory compression chooses between its grouped and un-grouped path (see `MAT.forward`).
Grouping = Literal["batch", "sample"]

# Loss weight of each future representation, as the original MAT.
FUTURE_LOSS_WEIGHT = 0.1


@dataclass
class MATConfig:
    """Hyper-parameters of MAT; the defaults are the THUMOS two-stream config.

    Args:
        visual_size: input visual feature size (768 for StreamFormer features).
        motion_size: input motion (optical flow) feature size, or None for a visual-only model.
        d_model, num_heads, dim_feedforward, dropout, activation: every transformer layer.
        long_memory_num_samples: long-memory tokens per sample (1024 frames at rate 4 -> 256).
        work_memory_length: observed work-window tokens (8 s at 4 fps -> 32).
        anticipation_length: anticipation queries after the work tokens (2 s -> 8); they are the
            first rows of `final_query`.
        future_length: future tokens predicted by the CCI (12 s -> 48); rows of `final_query`.
        groups: long-memory groups of the grouped compression path (0: never grouped).
        cci_times: memory-anticipation circular interaction rounds (work representations = cci_times + 1).
        enc_queries, enc_query_layers: learnable queries and decoder layers of the compression's
            first stage (ENC_MODULE[0]).
        enc_layers: self-attention layers of the compression's second stage (ENC_MODULE[1]).
        dec_layers: layers of the short-term decoder (DEC_MODULE).
        gen_queries, gen_layers: future generation queries and layers (GEN_MODULE).
        fut_layers: layers of each future fusion of the CCI (each work fusion has one layer, as in
            the original).
        num_classes: classifier outputs, background and ambiguous included (THUMOS 22, TVSeries 31).
        knn: keep only the top `int(3 * keys // 4)` logits of every attention row (the original
            always does); False gives plain softmax attention.
        max_positions: rows of the sinusoidal positional-encoding table.
    """

    visual_size: int = 768
    motion_size: int | None = 1024
    d_model: int = 1024
    num_heads: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.0
    activation: Activation = "gelu"
    long_memory_num_samples: int = 256
    work_memory_length: int = 32
    anticipation_length: int = 8
    future_length: int = 48
    groups: int = 8
    cci_times: int = 2
    enc_queries: int = 16
    enc_query_layers: int = 1
    enc_layers: int = 2
    dec_layers: int = 2
    gen_queries: int = 32
    gen_layers: int = 2
    fut_layers: int = 1
    num_classes: int = 22
    knn: bool = True
    max_positions: int = 5000

    def __post_init__(self) -> None:
        positive = (
            "visual_size", "d_model", "num_heads", "dim_feedforward", "long_memory_num_samples", "work_memory_length",
            "future_length", "enc_queries", "enc_query_layers", "enc_layers", "dec_layers", "gen_queries", "gen_layers",
            "fut_layers", "num_classes",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.motion_size is not None and self.motion_size < 1:
            raise ValueError(f"motion_size must be >= 1, or None for a visual-only model, got {self.motion_size}")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.num_heads or self.d_model % 2:
            raise ValueError(f"d_model {self.d_model} must be even and divisible by num_heads {self.num_heads}")
        if self.anticipation_length < 0:
            raise ValueError(f"anticipation_length must be >= 0, got {self.anticipation_length}")
        if self.future_length < self.anticipation_length:
            raise ValueError(
                f"future_length {self.future_length} < anticipation_length {self.anticipation_length}: the "
                "anticipation queries are the first rows of the future queries"
            )
        if self.work_tokens > self.max_positions:
            raise ValueError(f"work + anticipation tokens ({self.work_tokens}) exceed max_positions {self.max_positions}")
        if self.cci_times < 2:
            raise ValueError(f"cci_times must be >= 2 (the first round regenerates the future), got {self.cci_times}")
        if self.groups < 0:
            raise ValueError(f"groups must be >= 0 (0: never grouped), got {self.groups}")
        if self.groups:
            group_size, rest = divmod(self.long_memory_num_samples, self.groups)
            if rest:
                raise ValueError(
                    f"long_memory_num_samples {self.long_memory_num_samples} is not divisible by groups {self.groups}"
                )
            # The grouped path runs with fewer than `groups` masked positions; a group of at least
            # `groups` positions therefore always keeps a visible one.
            if group_size < self.groups:
                raise ValueError(
                    f"groups of {group_size} positions are smaller than groups={self.groups}: a grouped sample with "
                    f"{self.groups - 1} padded positions could mask a whole group (need long_memory_num_samples >= groups**2)"
                )
        if self.knn:
            # Fewest keys any attention sees: the self-attention over the queries, the compressed
            # memory and the work tokens, or the long memory itself.
            fewest_keys = min(
                self.long_memory_num_samples,
                self.enc_queries,
                self.groups or self.enc_queries,
                self.work_tokens,
                self.gen_queries,
                self.future_length,
            )
            if fewest_keys < 2:
                raise ValueError("knn keeps int(3 * keys // 4) keys per query, none for an attention over a single key")

    @property
    def two_stream(self) -> bool:
        return self.motion_size is not None

    @property
    def work_tokens(self) -> int:
        """Rows of every work representation: observed work tokens then anticipation tokens."""
        return self.work_memory_length + self.anticipation_length


@dataclass
class MATOutput:
    """Logits of every representation.

    Args:
        work_scores: cci_times + 1 tensors [B, work + anticipation, C]: the decoder output, then one
            per CCI round; the last one is the prediction.
        future_scores: cci_times tensors [B, future_length, C]: the generated future (resized from
            gen_queries rows by nearest interpolation), then one per future fusion.
    """

    work_scores: list[Tensor]
    future_scores: list[Tensor]


# ---------------------------------------------------------------------------------------------
# Building blocks


def causal_mask(size: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """[size, size] additive mask: 0 on and below the diagonal, -inf above (row i sees keys 0..i)."""
    return torch.full((size, size), float("-inf"), dtype=dtype, device=device).triu(1)


def additive_mask(masked: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (True = masked) -> additive float mask (-inf where masked, 0 elsewhere)."""
    return torch.zeros(masked.shape, dtype=dtype, device=masked.device).masked_fill(masked, float("-inf"))


class KnnMultiheadAttention(nn.Module):
    """Multi-head attention with a packed input projection and top-k logit sparsification.

    Masks are additive float tensors (0 / -inf): `attn_mask` [Lq, Lk] is shared by the batch,
    `key_padding_mask` [B, Lk] is per sample; both are added to the logits. With `knn`, each query
    then keeps its `int(3 * Lk // 4)` largest logits and drops the rest to -inf before the softmax.
    Masked keys sort last, so a row keeps all its visible keys when it has fewer than k of them
    (the -inf entries that fill its top-k stay -inf).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, knn: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.knn = knn
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """query [B, Lq, D], key / value [B, Lk, D] -> [B, Lq, D]."""
        batch, query_length, d_model = query.shape
        head_dim = d_model // self.num_heads
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)

        def heads(x: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, head_dim]
            return x.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        q = heads(F.linear(query, weight_q, bias_q) * head_dim**-0.5)
        k = heads(F.linear(key, weight_k, bias_k))
        v = heads(F.linear(value, weight_v, bias_v))
        logits = q @ k.transpose(-1, -2)  # [B, H, Lq, Lk]

        mask = attn_mask
        if key_padding_mask is not None:
            padding = key_padding_mask[:, None, None, :]
            mask = padding if mask is None else mask + padding
        if mask is not None:
            logits = logits + mask
        if self.knn:
            top = logits.topk(int(logits.shape[-1] * 3 // 4), dim=-1).indices
            kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
            logits = logits.masked_fill(~kept, float("-inf"))

        weights = F.dropout(logits.softmax(dim=-1), self.dropout, self.training)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(batch, query_length, d_model))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer: x = LN(x + SA(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: MATConfig) -> None:
        super().__init__()
        d_model = config.d_model
        self.self_attn = KnnMultiheadAttention(d_model, config.num_heads, config.dropout, config.knn)
        self.linear1 = nn.Linear(d_model, config.dim_feedforward)
        self.dropout = nn.Dropout(config.dropout)
        self.linear2 = nn.Linear(config.dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.dropout)
        self.activation = F.gelu if config.activation == "gelu" else F.relu

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, L, D]; mask: additive [L, L]."""
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, attn_mask=mask)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: x = LN(x + SA(x)); x = LN(x + CA(x, memory)); x = LN(x + FFN(x))."""

    def __init__(self, config: MATConfig) -> None:
        super().__init__()
        d_model = config.d_model
        self.self_attn = KnnMultiheadAttention(d_model, config.num_heads, config.dropout, config.knn)
        self.multihead_attn = KnnMultiheadAttention(d_model, config.num_heads, config.dropout, config.knn)
        self.linear1 = nn.Linear(d_model, config.dim_feedforward)
        self.dropout = nn.Dropout(config.dropout)
        self.linear2 = nn.Linear(config.dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.dropout)
        self.dropout3 = nn.Dropout(config.dropout)
        self.activation = F.gelu if config.activation == "gelu" else F.relu

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, Lq, D], memory [B, Lm, D]; tgt_mask [Lq, Lq], memory_mask [Lq, Lm] and
        memory_key_padding_mask [B, Lm] additive."""
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, attn_mask=tgt_mask)))
        attended = self.multihead_attn(x, memory, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask)
        x = self.norm2(x + self.dropout2(attended))
        return self.norm3(x + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class TransformerEncoder(nn.Module):
    """A stack of `EncoderLayer` and a final LayerNorm."""

    def __init__(self, config: MATConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(num_layers))
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """A stack of `DecoderLayer` and a final LayerNorm."""

    def __init__(self, config: MATConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(num_layers))
        self.norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, memory_key_padding_mask)
        return self.norm(x)


class FeatureHead(nn.Module):
    """Input projection to d_model, one per memory.

    Visual only: Linear -> LayerNorm -> ReLU. Two-stream: the same on visual and on motion, then
    concat (visual first) -> Linear(2 d_model, d_model) -> LayerNorm -> ReLU.
    """

    def __init__(self, config: MATConfig) -> None:
        super().__init__()
        d_model = config.d_model

        def projection(in_features: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(in_features, d_model), nn.LayerNorm(d_model), nn.ReLU())

        self.visual_linear = projection(config.visual_size)
        if config.two_stream:
            self.motion_linear = projection(config.motion_size)
            self.input_linear = projection(2 * d_model)

    def forward(self, visual: Tensor, motion: Tensor | None = None) -> Tensor:
        """visual [B, L, Dv], motion [B, L, Dm] (two-stream only) -> [B, L, d_model]."""
        visual = self.visual_linear(visual)
        if motion is None:
            return visual
        return self.input_linear(torch.cat([visual, self.motion_linear(motion)], dim=-1))


class PositionalEncoding(nn.Module):
    """Sinusoidal positions added from row `offset` of the table (sin on even, cos on odd channels)."""

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        # A constant: not saved (the original saves it, see the module docstring).
        self.register_buffer("pe", torch.empty(max_len, d_model), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        max_len, d_model = self.pe.shape
        position = torch.arange(max_len, dtype=torch.float32, device=self.pe.device)[:, None]
        frequency = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32, device=self.pe.device) * (-math.log(10000.0) / d_model)
        )
        with torch.no_grad():
            self.pe[:, 0::2] = torch.sin(position * frequency)
            self.pe[:, 1::2] = torch.cos(position * frequency)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x [B, L, D] -> x + pe[offset : offset + L]."""
        return self.dropout(x + self.pe[offset : offset + x.shape[1]].to(x.dtype))


# ---------------------------------------------------------------------------------------------
# MAT


class MAT(nn.Module):
    """Memory-and-Anticipation Transformer (the original's `LSTR` / `LSTRStream` training graph)."""

    def __init__(self, config: MATConfig) -> None:
        super().__init__()
        self.config = config
        d_model = config.d_model
        self.feature_head_long = FeatureHead(config)
        self.feature_head_work = FeatureHead(config)
        self.pos_encoding = PositionalEncoding(d_model, config.dropout, config.max_positions)

        # (1) Long-term memory compression: queries read the long memory (stage 1), then
        # self-attention over the compressed tokens (stage 2).
        self.enc_queries = nn.ModuleList([nn.Embedding(config.enc_queries, d_model)])
        self.enc_modules = nn.ModuleList(
            [TransformerDecoder(config, config.enc_query_layers), TransformerEncoder(config, config.enc_layers)]
        )
        # (2) Short-term memory and anticipation decoder.
        self.dec_modules = TransformerDecoder(config, config.dec_layers)
        # (3) Memory-anticipation circular interaction. `final_query` holds the future queries; its
        # first `anticipation_length` rows are also the anticipation queries of (2).
        self.gen_query = nn.Embedding(config.gen_queries, d_model)
        self.gen_layer = TransformerDecoder(config, config.gen_layers)
        self.final_query = nn.Embedding(config.future_length, d_model)
        self.work_fusions = nn.ModuleList(TransformerDecoder(config, 1) for _ in range(config.cci_times))
        self.fut_fusions = nn.ModuleList(TransformerDecoder(config, config.fut_layers) for _ in range(config.cci_times - 1))
        # (4) One classifier shared by every representation.
        self.classifier = nn.Linear(d_model, config.num_classes)

        self.apply(init_weights)

    def forward(
        self, visual: Tensor, motion: Tensor | None = None, memory_mask: Tensor | None = None, grouping: Grouping = "batch"
    ) -> MATOutput:
        """Score a batch of samples.

        Args:
            visual: [B, S + W, Dv] features, the S = long_memory_num_samples long-memory rows first,
                then the W = work_memory_length work rows (oldest first).
            motion: [B, S + W, Dm] for a two-stream config, None for a visual-only one.
            memory_mask: [B, S] bool, True = padded long-memory position (never attended); every
                sample must keep at least one visible position. None: nothing padded.
            grouping: how the long-memory compression picks its path. The grouped path (one token
                per group of S / groups positions -> `groups` memory tokens) is taken only with
                fewer than `groups` padded positions, else the un-grouped one (`enc_queries` tokens).
                "batch" counts the padded positions of the whole batch, as the original (training
                and its train-time test): a sample's scores then depend on its batch mates.
                "sample" counts them per sample (= "batch" at batch size 1), so every sample's
                scores depend on that sample only; online inference uses it.
        """
        config = self.config
        batch, length, _ = visual.shape
        if length != config.long_memory_num_samples + config.work_memory_length:
            raise ValueError(
                f"expected {config.long_memory_num_samples} long-memory + {config.work_memory_length} work rows, got {length}"
            )
        if config.two_stream != (motion is not None):
            raise ValueError(
                "a two-stream MAT needs motion features" if config.two_stream else "a visual-only MAT takes no motion"
            )
        if memory_mask is None:
            memory_mask = torch.zeros(batch, config.long_memory_num_samples, dtype=torch.bool, device=visual.device)
        if memory_mask.dtype != torch.bool or memory_mask.shape != (batch, config.long_memory_num_samples):
            raise ValueError(
                f"memory_mask must be bool [{batch}, {config.long_memory_num_samples}], got {memory_mask.dtype} {tuple(memory_mask.shape)}"
            )
        if memory_mask.all(dim=1).any():
            raise ValueError("memory_mask masks every long-memory position of a sample; keep at least one visible")

        num_padded = memory_mask.sum(dim=1)
        if grouping == "batch":
            return self._forward(visual, motion, memory_mask, grouped=config.groups > 0 and int(num_padded.sum()) < config.groups)
        if grouping != "sample":
            raise ValueError(f"grouping must be 'batch' or 'sample', got {grouping!r}")
        # Grouped and un-grouped samples give memories of different lengths: run them as two batches.
        grouped = num_padded < config.groups
        parts = []
        for path in (True, False):
            index = (grouped == path).nonzero().flatten()
            if len(index):
                part_motion = None if motion is None else motion[index]
                parts.append((index, self._forward(visual[index], part_motion, memory_mask[index], grouped=path)))
        if len(parts) == 1:
            return parts[0][1]

        def merge(tensors: list[Tensor]) -> Tensor:
            merged = tensors[0].new_empty(batch, *tensors[0].shape[1:])
            for (index, _), tensor in zip(parts, tensors, strict=True):
                merged[index] = tensor
            return merged

        (_, first), (_, second) = parts
        return MATOutput(
            work_scores=[merge(list(pair)) for pair in zip(first.work_scores, second.work_scores, strict=True)],
            future_scores=[merge(list(pair)) for pair in zip(first.future_scores, second.future_scores, strict=True)],
        )

    def _forward(self, visual: Tensor, motion: Tensor | None, memory_mask: Tensor, grouped: bool) -> MATOutput:
        config = self.config
        num_samples = config.long_memory_num_samples
        long_motion, work_motion = (None, None) if motion is None else (motion[:, :num_samples], motion[:, num_samples:])
        memory = self.compress_long_memory(self.feature_head_long(visual[:, :num_samples], long_motion), memory_mask, grouped)

        work = self.pos_encoding(self.feature_head_work(visual[:, num_samples:], work_motion))
        anticipation_queries = self.final_query.weight[: config.anticipation_length].expand(len(visual), -1, -1)
        anticipation = self.pos_encoding(anticipation_queries, offset=config.work_memory_length)
        tokens = torch.cat([work, anticipation], dim=1)
        mask = causal_mask(tokens.shape[1], tokens.dtype, tokens.device)
        output = self.dec_modules(tokens, memory, tgt_mask=mask)

        work_representations, future_representations = self.cci(memory, output, mask)
        generated, *fused = future_representations
        # The generated future has gen_queries rows; resize it to future_length (nearest).
        generated = F.interpolate(generated.transpose(1, 2), size=config.future_length).transpose(1, 2)
        return MATOutput(
            work_scores=[self.classifier(x) for x in work_representations],
            future_scores=[self.classifier(x) for x in (generated, *fused)],
        )

    def compress_long_memory(self, long_tokens: Tensor, memory_mask: Tensor, grouped: bool) -> Tensor:
        """[B, S, D] long-memory tokens -> [B, groups, D] (grouped) or [B, enc_queries, D] memory."""
        batch, num_samples, d_model = long_tokens.shape
        read_memory, refine_memory = self.enc_modules
        queries = self.enc_queries[0].weight
        padding = additive_mask(memory_mask, long_tokens.dtype)
        if grouped:
            # Each group of S / groups consecutive positions is read by all queries, whose outputs
            # are averaged into one token per group.
            groups = self.config.groups
            group_tokens = long_tokens.reshape(batch * groups, num_samples // groups, d_model)
            read = read_memory(
                queries.expand(batch * groups, -1, -1), group_tokens, memory_key_padding_mask=padding.reshape(batch * groups, -1)
            )
            memory = read.mean(dim=1).view(batch, groups, d_model)
        else:
            memory = read_memory(queries.expand(batch, -1, -1), long_tokens, memory_key_padding_mask=padding)
        return refine_memory(memory)

    def cci(self, memory: Tensor, output: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Memory-anticipation circular interaction.

        memory [B, M, D], output [B, W + A, D] (the decoder's), mask its causal [W + A, W + A] mask.
        Returns the work representations ([output, one per round]) and the future ones ([the
        generated gen_queries rows, one per future fusion of future_length rows]).
        """
        batch, num_memory, _ = memory.shape
        future = self.gen_layer(self.gen_query.weight.expand(batch, -1, -1), torch.cat([memory, output], dim=1))
        work_representations, future_representations = [output], [future]
        for i, work_fusion in enumerate(self.work_fusions):
            # Work tokens see all memory and all future tokens but only the earlier work tokens.
            work_visibility = torch.cat(
                [mask.new_zeros(len(mask), num_memory), mask, mask.new_zeros(len(mask), future.shape[1])], dim=1
            )
            output = work_fusion(output, torch.cat([memory, output, future], dim=1), tgt_mask=mask, memory_mask=work_visibility)
            work_representations.append(output)
            if i == len(self.fut_fusions):  # the last round updates the work tokens only
                break
            context = torch.cat([memory, output, future], dim=1)
            if i == 0:
                future = self.fut_fusions[0](self.final_query.weight.expand(batch, -1, -1), context)
            else:  # only with cci_times > 2: causal refinement of the previous future
                future_mask = causal_mask(future.shape[1], mask.dtype, mask.device)
                future_visibility = torch.cat(
                    [mask.new_zeros(len(future_mask), num_memory + output.shape[1]), future_mask], dim=1
                )
                future = self.fut_fusions[i](future, context, tgt_mask=future_mask, memory_mask=future_visibility)
            future_representations.append(future)
        return work_representations, future_representations


def init_weights(module: nn.Module) -> None:
    """The original's initialisation, for `model.apply` (children before parents).

    Linear: kaiming_uniform(a=sqrt(5)) weights and uniform(+-1/sqrt(fan_in)) biases (PyTorch's
    default, which the original re-applies to weights only). Attention: xavier_uniform packed input
    projection, zero input and output biases. Embedding: N(0, 1). LayerNorm: 1, 0. The original
    deep-copies one prototype layer per stack, so its layers start with equal attention projections
    and FFN biases; here each layer draws its own from the same distributions.
    """
    if isinstance(module, nn.Linear):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            bound = 1 / math.sqrt(module.in_features)
            nn.init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, (KnnMultiheadAttention, PositionalEncoding)):
        module.reset_parameters()
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Loss and schedule


def mce_loss(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """MAT's multi-label cross-entropy `MCE`.

    Per row: -sum_c target_c * log_softmax(logits)_c (multi-hot targets are not renormalised).
    With `ignore_index >= 0` (THUMOS: 21, "Ambiguous"), that column is dropped from logits and
    targets and rows whose target marks it are left out of the mean; the ignored logit gets no
    gradient. Otherwise (TVSeries: -100) every column and row counts.

    Args:
        logits, target: [..., C]; the leading dimensions are flattened into rows.
    Returns: the mean over the counted rows (0, not the original's NaN, when there are none).
    """
    num_classes = logits.shape[-1]
    logits = logits.reshape(-1, num_classes).float()
    target = target.reshape(-1, num_classes).to(logits.dtype)
    if ignore_index < 0:
        return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
    counted = (target[:, ignore_index] != 1).to(logits.dtype)
    kept = [c for c in range(num_classes) if c != ignore_index]
    per_row = -(target[:, kept] * logits[:, kept].log_softmax(dim=-1)).sum(dim=-1)
    return (per_row * counted).sum() / counted.sum().clamp_min(1)


def detection_loss_weights(num_representations: int) -> list[float]:
    """Weights of the work representations: 0.2 for the decoder's, then 0.8 i - 0.6 for CCI round i
    (0.2, 1.0 with two rounds: the last representation dominates)."""
    return [0.2] + [0.8 * i - 0.6 for i in range(1, num_representations)]


def mat_loss(output: MATOutput, target: Tensor, future: Tensor, ignore_index: int = -100) -> dict[str, Tensor]:
    """The original's training loss: weighted MCE of every representation.

    Args:
        output: the MAT output.
        target: [B, work + anticipation, C] targets of the work and anticipated rows.
        future: [B, future_length, C] future targets.
    Returns: {"loss": det_loss + fut_loss, "det_loss": sum of 0.2, 0.2, 1.0 x MCE(work scores),
        "fut_loss": sum of 0.1 x MCE(future scores)}.
    """
    weights = detection_loss_weights(len(output.work_scores))
    det_loss = sum(w * mce_loss(s, target, ignore_index) for w, s in zip(weights, output.work_scores, strict=True))
    fut_loss = sum(FUTURE_LOSS_WEIGHT * mce_loss(s, future, ignore_index) for s in output.future_scores)
    return {"loss": det_loss + fut_loss, "det_loss": det_loss, "fut_loss": fut_loss}


def warmup_cosine(iteration: int, warmup_iters: int, max_iters: int, factor: float = 0.3) -> float:
    """Learning-rate multiplier of the original `warmup_cosine` schedule, for `LambdaLR` stepped per iteration.

    A linear warm-up from `factor` to 1 over `warmup_iters` multiplied by a half cosine over the
    whole run: w(it) * 0.5 (1 + cos(pi it / max_iters)). Warm-up and cosine overlap, so the
    multiplier never reaches 1: with 10 warm-up epochs of 25 it is 0.655 at the end of the warm-up
    and peaks at 0.663 shortly before.
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    warmup = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warmup = factor * (1 - alpha) + alpha
    return warmup * 0.5 * (1 + math.cos(math.pi * iteration / max_iters))
