"""The language model's KV cache for one video stream, with spans evicted from the middle.

A streaming session feeds the LM each frame's tokens and each question/answer round as they come and
keeps the KV cache between them; to stay within memory it evicts spans it no longer needs (old frames,
old rounds) from anywhere in the cache, as StreamingVLM does. The tokens left keep contiguous positions
0..length-1, so the stream can run for ever without reaching positions the LM never saw in training.

Keys are cached after RoPE, i.e. already rotated by their old position. RoPE is a rotation by an angle
linear in the position, R(new) = R(new - old) R(old), so moving a kept key to its new position is one
more rotation by the shift. Layers without RoPE (SmolLM3's NoPE layers) hold position-free keys and are
left as they are; values never carry positions.

What eviction cannot undo: in an LM of more than one layer, the kept tokens' keys and values were
computed while the evicted tokens were visible and keep that context (as with every sink or window
method). Only a 1-layer LM matches a fresh forward over the kept tokens exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicLayer

# RoPE variants whose frequencies depend on neither the position nor the sequence length, so a shift of
# position is a rotation of its own. "yarn" also scales cos and sin by a constant, divided out below.
# Refused: "dynamic" (frequencies change with the sequence length) and "longrope" (switches between two
# frequency sets with it): keys rotated under one set cannot be moved under another.
SHIFTABLE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

RotaryFn = Callable[..., tuple[Tensor, Tensor]]


class LMCache:
    """The LM's KV cache for one stream, with contiguous positions 0..length-1 over the tokens it keeps.

    Args:
        language_model: a transformers causal LM (`PreTrainedModel`) with RoPE and full attention in
            every layer. Batch size is 1: one cache is one stream.

    Example:
        ```python
        cache = LMCache(model.language_model)
        logits = cache.append(frame_embeds)  # [1, q, H] -> logits of the last token [vocab]
        cache.evict(0, 49)  # drop the oldest frame; the rest move down to 0..length-1
        answer = cache.generate(cache.append(question_embeds), max_new_tokens=32, stop_ids=[eos])
        ```
    """

    def __init__(self, language_model: PreTrainedModel) -> None:
        self.language_model = language_model
        self.config = language_model.config.get_text_config(decoder=True)
        self._rotary_emb, self._attention_scaling = _shiftable_rotary_embedding(language_model, self.config)
        self._apply_rotary = _apply_rotary_fn(language_model)
        self._rope_layers = _rope_layers(self.config)
        self.reset()

    def reset(self) -> None:
        """Forget every token: a fresh, empty cache."""
        cache = DynamicCache(config=self.config)
        other = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
        if other:
            raise ValueError(f"LMCache needs full attention in every layer; this LM's cache has {other} layers")
        self.cache = cache

    @property
    def length(self) -> int:
        """Tokens held (the next token's position)."""
        return self.cache.get_seq_length()

    def nbytes(self) -> int:
        """Bytes of all the keys and values held."""
        return sum(t.numel() * t.element_size() for layer in self._filled_layers() for t in (layer.keys, layer.values))

    @torch.no_grad()
    def append(self, embeds: Tensor) -> Tensor:
        """Run the LM on new tokens `embeds` [1, q, H] at positions length..length+q-1, attending to the
        cache, and keep their keys and values. Returns the logits of the last new token [vocab], float32."""
        if embeds.ndim != 3 or embeds.shape[1] == 0:
            raise ValueError(f"embeds must be [1, q, hidden] with q >= 1, got {tuple(embeds.shape)}")
        if embeds.shape[0] != 1:
            raise ValueError(f"LMCache holds one stream (batch size 1), got batch size {embeds.shape[0]}")
        start = self.length
        positions = torch.arange(start, start + embeds.shape[1], device=embeds.device)[None]
        out = self.language_model(
            inputs_embeds=embeds, position_ids=positions, past_key_values=self.cache, use_cache=True, logits_to_keep=1
        )
        return out.logits[0, -1].float()

    def keep(self, indices: Tensor | Sequence[int]) -> None:
        """Keep only the tokens at `indices` (sorted, unique, in 0..length-1) in every layer; each kept
        token moves to its rank among them, its key rotated from the old position to the new one."""
        kept = self._check_indices(indices)
        if len(kept) == self.length:
            return
        self._gather(kept)
        self._rotate_keys(torch.arange(len(kept)) - kept)

    def evict(self, start: int, end: int) -> None:
        """Drop tokens start..end-1; the later ones move down by end - start positions."""
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"cannot evict [{start}, {end}) from a cache of {self.length} tokens")
        self.keep([*range(start), *range(end, self.length)])

    @torch.no_grad()
    def generate(
        self,
        logits: Tensor,
        max_new_tokens: int,
        stop_ids: Iterable[int] = (),
        embed_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> list[int]:
        """Greedy decoding from `logits` (what `append` returned for the prompt): up to `max_new_tokens`
        tokens, ending after the first of `stop_ids`. Every token returned, the stop token included, is
        appended to the cache, so the answer stays in the stream's context for the next question.

        `embed_fn` maps token ids [1, 1] to input embeddings [1, 1, H] (default: the LM's own).
        """
        embed = embed_fn or self.language_model.get_input_embeddings()
        stops = set(stop_ids)
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax())
            tokens.append(token)
            logits = self.append(embed(torch.tensor([[token]], device=self.language_model.device)))
            if token in stops:
                break
        return tokens

    def _filled_layers(self) -> list[DynamicLayer]:
        return [layer for layer in self.cache.layers if layer.is_initialized]

    def _check_indices(self, indices: Tensor | Sequence[int]) -> Tensor:
        """`indices` as a CPU int64 tensor, or ValueError unless sorted, unique and in range."""
        kept = torch.as_tensor(indices, dtype=torch.long, device="cpu")
        if kept.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(kept.shape)}")
        if len(kept) > 1 and not bool((kept.diff() > 0).all()):
            raise ValueError("indices must be sorted and unique")
        if len(kept) and (kept[0] < 0 or kept[-1] >= self.length):
            raise ValueError(f"indices must lie in [0, {self.length}), got {kept[0].item()}..{kept[-1].item()}")
        return kept

    def _gather(self, kept: Tensor) -> None:
        """Keep the keys and values of tokens `kept` in every layer, as they are (no position change)."""
        for layer in self._filled_layers():
            index = kept.to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)

    @torch.no_grad()
    def _rotate_keys(self, shift: Tensor) -> None:
        """Rotate the keys of every RoPE layer by `shift` [length] positions, one shift per token."""
        if not bool(shift.any()):
            return  # a kept prefix stays where it was
        rope_layers = (layer for layer, rope in zip(self.cache.layers, self._rope_layers, strict=True) if rope)
        layers = [layer for layer in rope_layers if layer.is_initialized]
        if not layers:
            return
        # In float32 whatever the cache's dtype: one rounding, when the rotated key is stored.
        probe = torch.empty(0, device=layers[0].keys.device, dtype=torch.float32)
        cos, sin = self._rotary_emb(probe, shift[None].to(probe.device))
        cos, sin = cos / self._attention_scaling, sin / self._attention_scaling
        for layer in layers:
            keys = layer.keys.float()
            _, rotated = self._apply_rotary(keys, keys, cos.to(keys.device), sin.to(keys.device))
            layer.keys = rotated.to(layer.keys.dtype)


def _shiftable_rotary_embedding(language_model: PreTrainedModel, config: PretrainedConfig) -> tuple[nn.Module, float]:
    """The LM's rotary embedding module and its cos/sin scale, or ValueError where moving a cached key
    to another position is not one rotation of it."""
    rotary_emb = getattr(language_model.base_model, "rotary_emb", None)
    rope = getattr(config, "rope_parameters", None)
    if rotary_emb is None or not rope:
        raise ValueError(f"LMCache needs an LM with rotary position embeddings; {type(language_model).__name__} has none")
    if "rope_type" not in rope:
        raise ValueError(f"LMCache needs one RoPE for every layer; this LM has one per layer type: {sorted(rope)}")
    if rope["rope_type"] not in SHIFTABLE_ROPE_TYPES:
        raise ValueError(
            f"RoPE type {rope['rope_type']!r} is not supported: cached keys can only be moved to new positions "
            f"under RoPE whose frequencies are fixed ({', '.join(SHIFTABLE_ROPE_TYPES)})"
        )
    return rotary_emb, float(getattr(rotary_emb, "attention_scaling", 1.0))


def _apply_rotary_fn(language_model: PreTrainedModel) -> RotaryFn:
    """The model family's own `apply_rotary_pos_emb(q, k, cos, sin)`: the keys are rotated exactly as
    the family's attention rotated them (half-split or interleaved, full or partial head)."""
    module = sys.modules[type(language_model.base_model).__module__]
    fn = getattr(module, "apply_rotary_pos_emb", None)
    if fn is None:
        raise ValueError(f"{module.__name__} defines no apply_rotary_pos_emb: cannot move its cached keys")
    return fn


def _rope_layers(config: PretrainedConfig) -> list[bool]:
    """Whether each layer rotates its keys: `no_rope_layers` (SmolLM3, Llama 4) holds 1 for a layer
    with RoPE and 0 for a NoPE layer; without it every layer has RoPE."""
    flags = getattr(config, "no_rope_layers", None)
    if flags is None:
        return [True] * config.num_hidden_layers
    return [bool(flag) for flag in flags[: config.num_hidden_layers]]
