"""The streaming contract: cached chunks of any size == the offline forward under the same window."""

import pytest
import torch

from streamformer import TemporalKVCache, temporal_attention_mask
from streamformer.testing import tiny_model


def stream(model, video, chunks, **window):
    cache = model.new_cache(batch_size=video.shape[0], **window)
    outs, start = [], 0
    for size in chunks:
        outs.append(model(video[:, start : start + size], cache=cache))
        start += size
    assert start == video.shape[1]
    return cache, torch.cat([o.last_hidden_state for o in outs], 1), torch.cat([o.pooler_output for o in outs], 1)


def chunkings(total, seed):
    g = torch.Generator().manual_seed(seed)
    random_sizes, left = [], total
    while left:
        random_sizes.append(min(left, int(torch.randint(1, 6, (), generator=g))))
        left -= random_sizes[-1]
    return {"frame_by_frame": [1] * total, "random_chunks": random_sizes}


@pytest.mark.parametrize("total", [1, 2, 9, 17, 64])
@pytest.mark.parametrize("window", [{}, {"max_frames": 4}, {"max_frames": 5, "sink_frames": 2}], ids=["full", "window", "sinks"])
@torch.no_grad()
def test_streaming_equals_offline(total, window):
    model = tiny_model(num_hidden_layers=2)
    video = torch.randn(1, total, 3, 32, 32, generator=torch.Generator().manual_seed(total))
    offline = model(video, **window)
    for name, chunks in chunkings(total, seed=total).items():
        _, spatial, temporal = stream(model, video, chunks, **window)
        torch.testing.assert_close(spatial, offline.last_hidden_state, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(temporal, offline.pooler_output, atol=1e-5, rtol=0, msg=name)


@torch.no_grad()
def test_window_changes_what_is_seen():
    """A window must matter (else the equality above proves nothing about it)."""
    model = tiny_model()
    video = torch.randn(1, 9, 3, 32, 32)
    full = model(video).pooler_output
    windowed = model(video, max_frames=3).pooler_output
    torch.testing.assert_close(windowed[:, :3], full[:, :3], atol=1e-5, rtol=0)
    assert not torch.allclose(windowed[:, 3:], full[:, 3:], atol=1e-4)


@torch.no_grad()
def test_streaming_batch_of_two_streams():
    model = tiny_model()
    video = torch.randn(2, 6, 3, 32, 32)
    _, _, temporal = stream(model, video, [2, 1, 3], max_frames=3)
    torch.testing.assert_close(temporal, model(video, max_frames=3).pooler_output, atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_memory_is_bounded_under_a_window():
    model = tiny_model()
    cache = model.new_cache(max_frames=4, sink_frames=1)
    sizes = []
    for _ in range(12):
        model(torch.randn(1, 1, 3, 32, 32), cache=cache)
        sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1  # allocated once, never grows
    # 2 layers x (K and V) x [16 patches, 4 heads, 4 frames, 8 dims] x 4 bytes
    assert sizes[0] == 2 * 2 * 16 * 4 * 4 * 8 * 4
    assert cache.cached_frames() == 4 and cache.next_frame == 12
    unbounded = model.new_cache()
    for _ in range(12):
        model(torch.randn(1, 1, 3, 32, 32), cache=unbounded)
    assert unbounded.cached_frames() == 12 and unbounded.nbytes() > sizes[0]


@torch.no_grad()
def test_clamp_streams_past_num_frames_and_interpolate_refuses():
    model = tiny_model()  # num_frames = 8
    cache = model.new_cache()
    for _ in range(10):
        model(torch.randn(1, 1, 3, 32, 32), cache=cache)
    strict = tiny_model(temporal_position="interpolate")
    cache = strict.new_cache()
    strict(torch.randn(1, 8, 3, 32, 32), cache=cache)
    with pytest.raises(ValueError, match="cannot stream past num_frames=8"):
        strict(torch.randn(1, 1, 3, 32, 32), cache=cache)
    # Offline, interpolate resamples the table over the clip (the original's rule).
    clip = torch.randn(1, 16, 3, 32, 32)
    assert strict.embeddings.time_rows(torch.arange(16), 16).tolist() == [t // 2 for t in range(16)]
    assert strict(clip).pooler_output.shape == (1, 16, 32)


@torch.no_grad()
def test_cache_misuse_is_a_clear_error():
    model = tiny_model()
    cache = model.new_cache(batch_size=2)
    with pytest.raises(ValueError, match="batch size 2"):
        model(torch.randn(1, 1, 3, 32, 32), cache=cache)
    with pytest.raises(ValueError, match="window is the cache's"):
        model(torch.randn(2, 1, 3, 32, 32), cache=cache, max_frames=3)
    with pytest.raises(ValueError, match="must exceed sink_frames"):
        model.new_cache(max_frames=2, sink_frames=2)
    with pytest.raises(ValueError, match="never receives"):  # the sinks would be frames it never sees
        model.new_cache(max_frames=4, sink_frames=1, start_frame=5)
    with pytest.raises(RuntimeError, match="expected frame 0"):
        cache.update(0, torch.zeros(32, 4, 1, 8), torch.zeros(32, 4, 1, 8), torch.tensor([3]))


@pytest.mark.parametrize("window", [{}, {"max_frames": 3}], ids=["full", "window"])
@torch.no_grad()
def test_a_refused_call_leaves_the_stream_intact(window):
    """Wrong batch, wrong resolution: refused before any block changes state, and the stream goes on."""
    model = tiny_model(num_hidden_layers=2)
    video = torch.randn(1, 5, 3, 32, 32)
    cache = model.new_cache(**window)
    first = model(video[:, :2], cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        model(video[:, 2:3].expand(2, -1, -1, -1, -1), cache=cache)
    with pytest.raises(ValueError, match="resolution"):
        model(torch.randn(1, 1, 3, 16, 16), cache=cache)
    assert cache.next_frame == 2 and cache._next_frame == [2, 2]
    rest = model(video[:, 2:], cache=cache)
    offline = model(video, **window).pooler_output
    torch.testing.assert_close(torch.cat([first.pooler_output, rest.pooler_output], 1), offline, atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_call_failing_part_way_is_refused_until_reset(monkeypatch):
    model = tiny_model(num_hidden_layers=2)
    video = torch.randn(1, 4, 3, 32, 32)
    cache = model.new_cache(max_frames=3)
    model(video[:, :2], cache=cache)
    second = model.encoder.layer[1]
    monkeypatch.setattr(second, "forward", lambda *args, **kwargs: (_ for _ in ()).throw(MemoryError("out of memory")))
    with pytest.raises(MemoryError):
        model(video[:, 2:3], cache=cache)  # block 0 stored frame 2, block 1 never did
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="reset"):
        model(video[:, 2:3], cache=cache)
    cache.reset()
    assert cache.next_frame == 0 and cache.nbytes() == 0
    streamed = torch.cat([model(video[:, i : i + 1], cache=cache).pooler_output for i in range(4)], 1)
    torch.testing.assert_close(streamed, model(video, max_frames=3).pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [{}, {"max_frames": 3}], ids=["full", "window"])
@torch.no_grad()
def test_autocast_chunk_then_fp32_chunk(window):
    """bf16 keys under autocast, then fp32 ones: the cache converts on write and read."""
    model = tiny_model(num_hidden_layers=2)
    video = torch.randn(1, 4, 3, 32, 32)
    cache = model.new_cache(**window)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(video[:, :2], cache=cache)
    assert cache.keys[0].dtype == torch.bfloat16  # storage follows the first call
    later = model(video[:, 2:], cache=cache).pooler_output
    assert later.dtype == torch.float32 and cache._next_frame == [4, 4]
    # Only the first two frames' keys went through bf16: close to the fp32 stream.
    torch.testing.assert_close(later, model(video, **window).pooler_output[:, 2:], atol=0.05, rtol=0.05)
    # A cache told its dtype stores in it from the start.
    fp32 = model.new_cache(dtype=torch.float32, **window)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(video[:, :2], cache=fp32)
    assert fp32.keys[0].dtype == torch.float32


def test_cache_refuses_gradient_mode():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="inference"):
        model(torch.randn(1, 1, 3, 32, 32), cache=model.new_cache())


def test_mask_rule_on_a_hand_case():
    frames = torch.arange(6)
    mask = temporal_attention_mask(frames, frames, max_frames=3, sink_frames=1)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 0, 1, 1, 0, 0],
            [1, 0, 0, 1, 1, 0],
            [1, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    empty_slot = temporal_attention_mask(torch.tensor([2]), torch.tensor([-1, 1, 2]))
    assert empty_slot.tolist() == [[False, True, True]]


@torch.no_grad()
def test_stage_methods_compose_to_forward():
    """Downstream models run the blocks in slices (OVIS interleaves adapters between them)."""
    model = tiny_model(num_hidden_layers=4)
    video = torch.randn(1, 5, 3, 32, 32)
    cache = model.new_cache()
    context = model.temporal_context(5, cache)
    hidden = model.embed(video, context)
    for start in (0, 2):
        hidden = model.forward_layers(hidden, context, start, start + 2)
    pooled = model.forward_head(model.post_layernorm(hidden))
    torch.testing.assert_close(pooled, model(video).pooler_output, atol=1e-5, rtol=0)
    assert cache.next_frame == 5 and isinstance(cache, TemporalKVCache)


def unfused(model, video, chunks=None):
    """The training-time computation (two projections, then the gate): gradients enabled, none needed."""
    model.requires_grad_(False)
    with torch.enable_grad():
        if chunks is None:
            return model(video).pooler_output
        cache = model.new_cache()
        return torch.cat([model(part, cache=cache).pooler_output for part in video.split(chunks, dim=1)], 1)


def assert_same(actual, expected, dtype, msg=""):
    """fp32: within 1e-5 everywhere. bf16: within 1e-2 relative (in norm), the size of bf16's own
    rounding against fp32 on this model (both bf16 paths are about 0.008 from the fp32 one)."""
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0, msg=msg)
    else:
        relative = ((actual.float() - expected.float()).norm() / expected.float().norm()).item()
        assert relative < 1e-2, f"{msg}: relative difference {relative:.4f}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_temporal_output_equals_the_two_projections(dtype):
    """Inference folds tanh(gate) * temporal_dense(output.dense(x)) into one matrix: same outputs,
    offline and streaming, and rebuilt when the weights change."""
    model = tiny_model(num_hidden_layers=2).to(dtype)
    video = torch.randn(1, 7, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    for chunks in (None, 1, 3):
        reference = unfused(model, video, chunks)
        with torch.no_grad():
            cache = None if chunks is None else model.new_cache()
            parts = [video] if chunks is None else video.split(chunks, dim=1)
            fused = torch.cat([model(part, cache=cache).pooler_output for part in parts], 1)
        assert_same(fused, reference, dtype, msg=f"chunks {chunks}")
    layer = model.encoder.layer[0]
    assert len(layer.fused_temporal_output()) == 2 and not any("fused" in k for k in model.state_dict())
    with torch.no_grad():
        layer.temporal_dense.weight.mul_(-1)  # an in-place change: the fused matrix must follow
        assert_same(model(video).pooler_output, unfused(model, video), dtype, msg="after an in-place change")
