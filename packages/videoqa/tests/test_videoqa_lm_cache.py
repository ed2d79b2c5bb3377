"""LMCache, the LM's KV cache of one stream: appending in pieces, eviction from the middle with keys
re-rotated to contiguous positions (checked against a fresh forward on 1-layer LMs of four families and
three RoPE variants), NoPE layers left alone, refusals, memory accounting and greedy decoding."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
)
from videoqa_helpers import tiny_lm

from streamformer.testing import tiny_model
from streamformer_videoqa import StreamFormerForVideoQA, expand_placeholder
from streamformer_videoqa.lm_cache import LMCache

HIDDEN, VOCAB, KV_HEADS, HEAD_DIM = 32, 40, 2, 8
DEFAULT_ROPE = {"rope_theta": 10000.0, "rope_type": "default"}
FAMILIES = {
    "qwen2": (Qwen2Config, {}),
    "llama": (LlamaConfig, {}),
    "qwen3": (Qwen3Config, {"head_dim": HEAD_DIM}),  # Qwen3 normalises keys before RoPE
    "smollm3": (SmolLM3Config, {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
}
# Variants whose frequencies are fixed: the shift of a cached key is one rotation ("yarn" also scales cos/sin).
SHIFTABLE_ROPES = {
    "linear": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_theta": 10000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}  # fmt: skip


def tiny_causal_lm(family: str = "qwen2", layers: int = 1, rope: dict | None = None, attn: str = "sdpa", **overrides):
    """A random LM of `family` from config; weight matrices at std 0.3 so that positions matter to the
    logits (a fresh init's near-uniform attention would hide a wrong rotation)."""
    config_class, defaults = FAMILIES[family]
    config = config_class(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=KV_HEADS, max_position_embeddings=256, rope_parameters=rope or DEFAULT_ROPE,
        tie_word_embeddings=False, **{**defaults, **overrides},
    )  # fmt: skip
    lm = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.parameters():
            if p.ndim == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return lm


def embeds(length: int, seed: int) -> torch.Tensor:
    return torch.randn(1, length, HIDDEN, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def fresh_logits(lm, tokens: torch.Tensor) -> torch.Tensor:
    """The last position's logits of one plain forward (positions 0..n-1, no cache)."""
    return lm(inputs_embeds=tokens).logits[0, -1].float()


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_append_in_pieces_equals_one_forward(attn):
    lm = tiny_causal_lm("qwen2", layers=2, attn=attn)
    x = embeds(25, seed=0)
    cache = LMCache(lm)
    end = 0
    for size in (7, 1, 12, 5):
        logits = cache.append(x[:, end : end + size])
        end += size
        assert cache.length == end
        assert logits.shape == (VOCAB,) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, fresh_logits(lm, x[:, :end]), atol=1e-5, rtol=0)


EVICTION_CASES = [
    pytest.param("qwen2", {}, id="qwen2"),
    pytest.param("llama", {}, id="llama"),
    pytest.param("qwen3", {}, id="qwen3"),
    pytest.param("smollm3", {"no_rope_layers": [1]}, id="smollm3"),
    *[pytest.param("qwen2", {"rope": rope}, id=f"qwen2-{name}") for name, rope in SHIFTABLE_ROPES.items()],
]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "config"), EVICTION_CASES)
def test_evicting_matches_a_fresh_forward_over_the_kept_tokens(family, config, attn):
    """1 layer: after each eviction the cache is exactly what the kept tokens alone would give at
    positions 0..n-1, and so are the logits of what comes next."""
    lm = tiny_causal_lm(family, layers=1, attn=attn, **config)
    x, y, z = embeds(30, seed=0), embeds(5, seed=1), embeds(3, seed=2)
    cache = LMCache(lm)
    cache.append(x[:, :20])
    cache.append(x[:, 20:])

    cache.evict(4, 17)  # a middle span: 13 tokens move down by 13 positions
    alive = torch.cat([x[:, :4], x[:, 17:]], dim=1)
    assert cache.length == 17
    torch.testing.assert_close(cache.append(y), fresh_logits(lm, torch.cat([alive, y], 1)), atol=1e-4, rtol=0)

    kept = [0, 1, 5, 6, 7, 12, 20, 21]  # scattered, each token its own shift, on keys rotated once already
    cache.keep(kept)
    alive = torch.cat([alive, y], dim=1)[:, kept]
    torch.testing.assert_close(cache.append(z), fresh_logits(lm, torch.cat([alive, z], 1)), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("family", "config"), EVICTION_CASES)
def test_evicting_without_the_rotation_would_be_caught(family, config):
    """The same eviction with the keys only gathered (left at their old positions) is off by far more
    than the tolerance above: the fresh-forward comparison does test the rotation."""
    lm = tiny_causal_lm(family, layers=1, **config)
    x, y = embeds(30, seed=0), embeds(5, seed=1)
    cache = LMCache(lm)
    cache.append(x)
    cache._gather(torch.tensor([*range(4), *range(17, 30)]))
    assert max_error(cache.append(y), fresh_logits(lm, torch.cat([x[:, :4], x[:, 17:], y], 1))) > 1e-2


def test_a_nope_layer_is_not_rotated():
    """A 1-layer SmolLM3 whose layer has no RoPE: its keys hold no positions, so eviction only gathers
    them, and the result still matches a fresh forward."""
    lm = tiny_causal_lm("smollm3", layers=1, no_rope_layers=[0])
    x, y = embeds(30, seed=0), embeds(5, seed=1)
    cache = LMCache(lm)
    cache.append(x)
    before = cache.cache.layers[0].keys.clone()
    cache.evict(4, 17)
    kept = torch.tensor([*range(4), *range(17, 30)])
    assert torch.equal(cache.cache.layers[0].keys, before[:, :, kept])
    torch.testing.assert_close(cache.append(y), fresh_logits(lm, torch.cat([x[:, kept], y], 1)), atol=1e-4, rtol=0)


@torch.no_grad()
def test_smollm3_keeps_nope_keys_and_moves_rope_keys():
    """2 layers, NoPE then RoPE. The NoPE layer's output ignores positions, so the RoPE layer's keys of
    a fresh forward over the whole sequence, with each kept token given its new position, are exactly
    what keep() must leave: the original keys rotated to the new positions. (With RoPE first, layer 2's
    inputs would depend on the evicted tokens' positions and no such reference would exist.)"""
    lm = tiny_causal_lm("smollm3", layers=2, no_rope_layers=[0, 1])
    x = embeds(24, seed=0)
    kept = torch.tensor([0, 1, 2, 9, 10, 15, 16, 17, 23])
    cache = LMCache(lm)
    cache.append(x)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.cache.layers]
    cache.keep(kept)

    nope, rope = cache.cache.layers
    assert torch.equal(nope.keys, before[0][0][:, :, kept])
    for layer, (_, values) in zip(cache.cache.layers, before, strict=True):
        assert torch.equal(layer.values, values[:, :, kept])

    positions = torch.zeros(24, dtype=torch.long)  # the evicted tokens' positions do not matter here
    positions[kept] = torch.arange(len(kept))
    reference = DynamicCache(config=lm.config)
    lm(inputs_embeds=x, position_ids=positions[None], past_key_values=reference, use_cache=True)
    expected = reference.layers[1].keys[:, :, kept]
    torch.testing.assert_close(rope.keys, expected, atol=1e-5, rtol=0)
    assert max_error(before[1][0][:, :, kept], expected) > 1e-2  # left unrotated, they would not match


def test_keep_and_evict_refuse_bad_indices():
    cache = LMCache(tiny_causal_lm())
    cache.append(embeds(6, seed=0))
    for bad in ([3, 1], [1, 1, 2], [-1, 2], [2, 6], [[0, 1]]):
        with pytest.raises(ValueError, match="indices"):
            cache.keep(bad)
    for start, end in ((4, 2), (-1, 3), (0, 7)):
        with pytest.raises(ValueError, match="cannot evict"):
            cache.evict(start, end)
    assert cache.length == 6  # nothing was touched


def test_append_refuses_batches_and_empty_inputs():
    cache = LMCache(tiny_causal_lm())
    with pytest.raises(ValueError, match="batch size 2"):
        cache.append(embeds(8, seed=0).reshape(2, 4, HIDDEN))
    with pytest.raises(ValueError, match="q >= 1"):
        cache.append(torch.zeros(1, 0, HIDDEN))
    assert cache.length == 0


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 10000.0, "rope_type": "dynamic", "factor": 2.0},
        {
            "rope_theta": 10000.0, "rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
            "original_max_position_embeddings": 64,
        },
    ],
    ids=lambda rope: rope["rope_type"],
)  # fmt: skip
def test_rope_whose_frequencies_move_is_refused(rope):
    with pytest.raises(ValueError, match=f"RoPE type '{rope['rope_type']}' is not supported"):
        LMCache(tiny_causal_lm(rope=rope))


def test_lms_it_cannot_shift_are_refused():
    sliding = tiny_causal_lm(use_sliding_window=True, sliding_window=8, max_window_layers=0)
    with pytest.raises(ValueError, match="DynamicSlidingWindowLayer"):
        LMCache(sliding)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match="rotary position embeddings"):
        LMCache(gpt2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_length_and_nbytes_follow_appends_and_evictions(dtype):
    layers = 2
    lm = tiny_causal_lm(layers=layers).to(dtype)
    cache = LMCache(lm)
    per_token = layers * 2 * KV_HEADS * HEAD_DIM * torch.finfo(dtype).bits // 8  # K and V, every layer
    assert (cache.length, cache.nbytes()) == (0, 0)

    cache.append(embeds(10, seed=0).to(dtype))
    assert (cache.length, cache.nbytes()) == (10, 10 * per_token)
    cache.evict(2, 5)
    assert (cache.length, cache.nbytes()) == (7, 7 * per_token)
    assert all(layer.keys.dtype == dtype and layer.keys.shape == (1, KV_HEADS, 7, HEAD_DIM) for layer in cache.cache.layers)
    cache.append(embeds(4, seed=1).to(dtype))
    assert (cache.length, cache.nbytes()) == (11, 11 * per_token)
    cache.keep([0, 10])
    assert (cache.length, cache.nbytes()) == (2, 2 * per_token)
    cache.keep([])
    assert (cache.length, cache.nbytes()) == (0, 0)
    assert torch.isfinite(cache.append(embeds(3, seed=2).to(dtype))).all()  # an emptied cache takes new tokens
    assert cache.length == 3
    cache.reset()
    assert (cache.length, cache.nbytes()) == (0, 0)


@torch.no_grad()
def test_greedy_decoding_through_the_cache_equals_generate(tokenizer):
    lm = tiny_lm(len(tokenizer))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is the man doing"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    prompt = lm.get_input_embeddings()(ids)

    def hf_generate(stop: int) -> list[int]:
        out = lm.generate(
            inputs_embeds=prompt, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
            eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        return out[0].tolist()

    cache = LMCache(lm)
    answer = cache.generate(cache.append(prompt), max_new_tokens=12, stop_ids=[tokenizer.eos_token_id])
    assert answer == hf_generate(tokenizer.eos_token_id)
    assert cache.length == ids.shape[1] + len(answer)  # the answer went into the cache too

    # A stop token the answer reaches mid-way: decoding ends right after its first occurrence.
    stop = answer[len(answer) // 2]
    cache.reset()
    stopped = cache.generate(cache.append(prompt), max_new_tokens=12, stop_ids=[stop])
    assert stopped == answer[: answer.index(stop) + 1] == hf_generate(stop)
    assert cache.length == ids.shape[1] + len(stopped)

    # No stop token: exactly max_new_tokens tokens, all of them in the cache.
    cache.reset()
    assert cache.generate(cache.append(prompt), max_new_tokens=3) == answer[:3]
    assert cache.length == ids.shape[1] + 3


@torch.no_grad()
def test_streams_the_video_qa_model(tokenizer):
    """Frames, then a question, through the video QA model's LM: the answer equals the model's own
    `generate` over the whole prompt."""
    model = StreamFormerForVideoQA.from_parts(tiny_model(), tiny_lm(len(tokenizer)), tokenizer).eval()
    frames = torch.randn(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    video = model.encode_video(frames)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "<video> what is the person doing"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([expand_placeholder(ids, model.config.video_token_id, video.shape[1])])
    prompt = model.embed_inputs(ids, frames)
    at = ids[0].tolist().index(model.config.video_token_id)

    cache = LMCache(model.language_model)
    cache.append(prompt[:, : at + video.shape[1] // 2])  # the first frame as it arrives
    logits = cache.append(prompt[:, at + video.shape[1] // 2 :])  # the second frame and the question
    answer = cache.generate(logits, max_new_tokens=8, stop_ids=[tokenizer.eos_token_id])
    expected = model.generate(
        ids, frames, do_sample=False, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    assert answer == expected[0].tolist()
