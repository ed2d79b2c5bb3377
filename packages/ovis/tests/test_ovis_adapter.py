"""The ViT-Adapter around a tiny StreamFormer (64 px frames, patch 8: an 8x8 token grid, 4 blocks)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

from streamformer.testing import tiny_model
from streamformer_ovis.adapter import (
    LEVELS,
    AdapterConfig,
    StreamFormerAdapter,
    default_interaction_indexes,
    output_shapes,
    query_level_shapes,
    query_token_count,
    reference_points,
)

SIZE = 64
TINY = dict(conv_inplane=8, deform_num_heads=4)  # width 32 -> 4 heads of 8


def make_adapter(seed: int = 0, randomize: bool = True, **config) -> StreamFormerAdapter:
    torch.manual_seed(seed)
    backbone = tiny_model(seed=seed, image_size=SIZE, patch_size=8, num_hidden_layers=4)
    adapter = StreamFormerAdapter(backbone, AdapterConfig(**{**TINY, **config}))
    if randomize:
        randomize_adapter_(adapter, seed)
    return adapter.eval()


def randomize_adapter_(adapter: StreamFormerAdapter, seed: int) -> None:
    """Perturb every adapter parameter and BatchNorm statistic so every path carries signal."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if not name.startswith("backbone."):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for module in adapter.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))


def video(batch: int = 2, frames: int = 5, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def stream(adapter: StreamFormerAdapter, clip: torch.Tensor, chunks: list[int]) -> dict[str, torch.Tensor]:
    """Feed `clip` chunk by chunk through a cache; outputs laid out as the offline ones [B·T, ...]."""
    b = clip.shape[0]
    cache = adapter.new_cache(b)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in LEVELS}
    start = 0
    with torch.no_grad():
        for size in chunks:
            out = adapter(clip[:, start : start + size], cache=cache)
            for name in LEVELS:
                parts[name].append(out[name].unflatten(0, (b, size)))
            start += size
    return {name: torch.cat(p, dim=1).flatten(0, 1) for name, p in parts.items()}


@pytest.fixture(scope="module")
def adapter() -> StreamFormerAdapter:
    return make_adapter()


def test_shapes(adapter):
    with torch.no_grad():
        out = adapter(video(frames=3))
    assert list(out) == list(LEVELS)
    assert adapter.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert adapter.output_channels == 32
    for name, side in zip(LEVELS, (16, 8, 4, 2), strict=True):
        assert out[name].shape == (6, 32, side, side)
        assert torch.isfinite(out[name]).all()
    assert output_shapes(SIZE, SIZE) == {"res2": (16, 16), "res3": (8, 8), "res4": (4, 4), "res5": (2, 2)}
    assert query_level_shapes(SIZE, SIZE) == [(8, 8), (4, 4), (2, 2)]
    assert query_token_count(SIZE, SIZE) == 84
    # ViT-B arithmetic, without building one
    assert query_token_count(224, 224) == 784 + 196 + 49 == 1029
    assert query_level_shapes(512, 640) == [(64, 80), (32, 40), (16, 20)]
    assert default_interaction_indexes(12) == [[0, 2], [3, 5], [6, 8], [9, 11]]
    assert default_interaction_indexes(24) == [[0, 5], [6, 11], [12, 17], [18, 23]]
    assert default_interaction_indexes(6) == [[0, 1], [2, 3], [4, 4], [5, 5]]
    assert adapter.interaction_indexes == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert len(adapter.interactions[-1].extra_extractors) == 2
    assert all(len(i.extra_extractors) == 0 for i in adapter.interactions[:-1])


def test_spm_query_tokens(adapter):
    with torch.no_grad():
        c1, c2, c3, c4 = adapter.spm(video(frames=1).flatten(0, 1))
    assert c1.shape == (2, 32, 16, 16)
    assert (c2.shape[1], c3.shape[1], c4.shape[1]) == (64, 16, 4)
    assert c2.shape[1] + c3.shape[1] + c4.shape[1] == 84


def test_deformable_attention_samples_pixel_centres():
    """One-hot attention on a point at a pixel centre returns that pixel's value, per head."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (2, 4)]
    heads, head_dim, points = 2, 3, 4
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, head_dim, generator=g)
    queries = [(0, 1, 2), (1, 1, 3), (0, 2, 4), (1, 0, 0)]  # (level, i, j)
    locations = torch.rand(1, len(queries), heads, len(shapes), points, 2, generator=g)
    weights = torch.zeros(1, len(queries), heads, len(shapes), points)
    expected = []
    for q, (level, i, j) in enumerate(queries):
        h, w = shapes[level]
        for head in range(heads):
            point = (q + head) % points
            locations[0, q, head, level, point] = torch.tensor([(j + 0.5) / w, (i + 0.5) / h])
            weights[0, q, head, level, point] = 1.0
        start = sum(a * b for a, b in shapes[:level])
        expected.append(value[0, start + i * w + j].flatten())
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(out[0], torch.stack(expected), atol=1e-6, rtol=1e-6)

    # The adapter's reference points are those centres: sampling at them gives the value back.
    ref = reference_points(shapes)
    assert ref.shape == (1, 15 + 8, 1, 2)
    level_of = torch.tensor([0] * 15 + [1] * 8)
    locations = torch.zeros(1, 23, heads, 2, 1, 2)
    weights = torch.zeros(1, 23, heads, 2, 1)
    for q in range(23):
        locations[0, q, :, level_of[q], 0] = ref[0, q, 0]
        weights[0, q, :, level_of[q], 0] = 1.0
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(out[0], value[0].flatten(1), atol=1e-6, rtol=1e-6)


def test_deformable_attention_init():
    attn = make_adapter(randomize=False).interactions[0].extractor.attn.attn
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0
    assert attn.value_proj.bias.abs().sum() == 0 and attn.output_proj.bias.abs().sum() == 0
    offsets = attn.sampling_offsets.bias.view(attn.n_heads, attn.n_levels, attn.n_points, 2)
    # point k of each head at k + 1 times the head's unit direction (max-norm 1)
    torch.testing.assert_close(offsets[:, :, 1], 2 * offsets[:, :, 0])
    torch.testing.assert_close(offsets[:, :, 3], 4 * offsets[:, :, 0])
    torch.testing.assert_close(offsets[:, :, 0].abs().amax(-1), torch.ones(attn.n_heads, attn.n_levels))


@pytest.mark.parametrize("window", [None, 2])
def test_streaming_equals_offline(window):
    adapter = make_adapter(temporal_window=window)
    clip = video(frames=5)
    with torch.no_grad():
        offline = adapter(clip)
    for chunks in ([1, 1, 1, 1, 1], [2, 3]):
        online = stream(adapter, clip, chunks)
        for name in LEVELS:
            torch.testing.assert_close(online[name], offline[name], atol=1e-5, rtol=1e-5)
    if window is not None:  # the window matters: the last frame differs from the unbounded run
        unbounded = make_adapter()
        with torch.no_grad():
            full = unbounded(clip)
        last = full["res3"].unflatten(0, (2, 5))[:, -1]
        assert (last - offline["res3"].unflatten(0, (2, 5))[:, -1]).abs().max() > 1e-4


def test_causal(adapter):
    clip = video(frames=5)
    changed = clip.clone()
    changed[:, 3:] = video(frames=2, seed=7)
    with torch.no_grad():
        a, b = adapter(clip), adapter(changed)
    for name in LEVELS:
        x, y = a[name].unflatten(0, (2, 5)), b[name].unflatten(0, (2, 5))
        torch.testing.assert_close(x[:, :3], y[:, :3], atol=1e-6, rtol=1e-6)
        assert (x[:, 3:] - y[:, 3:]).abs().max() > 1e-3


def test_frozen_backbone_trains_lora_and_adapter():
    adapter = make_adapter().train()
    trainable = {name for name, p in adapter.named_parameters() if p.requires_grad}
    lora = {name for name, _ in adapter.backbone.named_parameters() if "lora_" in name}
    assert lora
    assert {f"backbone.{name}" for name in lora} <= trainable
    assert all(not name.startswith("backbone.") or "lora_" in name for name in trainable)
    adapter_params = {name for name, _ in adapter.named_parameters() if not name.startswith("backbone.")}
    assert adapter_params <= trainable

    out = adapter(video(frames=3))
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out.values())
    loss.backward()
    for name, p in adapter.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name

    with pytest.raises(RuntimeError, match="inference"):  # streaming needs no_grad
        adapter.eval()(video(frames=1), cache=adapter.new_cache(2))


def test_unfrozen_backbone_keeps_unused_head_frozen():
    backbone = tiny_model(image_size=SIZE, patch_size=8, num_hidden_layers=4)
    adapter = StreamFormerAdapter(backbone, AdapterConfig(**TINY, freeze_backbone=False))
    frozen = {name for name, p in adapter.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("backbone.head.", "backbone.post_layernorm.")) for name in frozen)


def test_errors(adapter):
    with pytest.raises(ValueError, match="divisible by 32"):
        adapter(video(frames=1, size=48))
    with pytest.raises(ValueError, match="divisible by 32"):
        adapter(torch.zeros(1, 1, 3, 64, 72))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        adapter(torch.zeros(1, 3, 64, 64))
    backbone = tiny_model(image_size=SIZE, patch_size=8, num_hidden_layers=4)
    with pytest.raises(ValueError, match="deform_num_heads"):
        StreamFormerAdapter(backbone, AdapterConfig(conv_inplane=8))  # 12 heads do not divide 32
    with pytest.raises(ValueError, match="interaction_indexes"):
        StreamFormerAdapter(backbone, AdapterConfig(**TINY, interaction_indexes=[[0, 0], [1, 1], [2, 3]]))
    with pytest.raises(ValueError, match="interaction_indexes"):
        StreamFormerAdapter(backbone, AdapterConfig(**TINY, interaction_indexes=[[0, 0], [1, 1], [2, 2], [2, 3]]))
    with pytest.raises(ValueError, match="at least 4"):
        StreamFormerAdapter(tiny_model(image_size=SIZE), AdapterConfig(**TINY))  # 2 blocks
    with pytest.raises(ValueError, match="temporal_window"):
        AdapterConfig(temporal_window=0)


def test_injector_changes_outputs_slightly():
    with_injector = make_adapter(randomize=False, with_injector=True)
    assert all(i.injector is not None for i in with_injector.interactions)
    assert torch.all(with_injector.interactions[0].injector.gamma == 1e-6)
    plain = StreamFormerAdapter(with_injector.backbone, AdapterConfig(**TINY)).eval()
    result = plain.load_state_dict(with_injector.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all(".injector." in key for key in result.unexpected_keys)

    clip = video(frames=2)
    with torch.no_grad():
        a, b = with_injector(clip), plain(clip)
    for name in LEVELS:
        diff = (a[name] - b[name]).abs().max()
        assert 0 < diff < 1e-4 * b[name].abs().max(), name

    with_injector.train()
    out = with_injector(clip)
    g = torch.Generator().manual_seed(3)
    sum((o * torch.randn(o.shape, generator=g)).sum() for o in out.values()).backward()
    gamma = with_injector.interactions[0].injector.gamma
    assert gamma.grad is not None and gamma.grad.abs().sum() > 0
