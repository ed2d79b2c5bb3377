"""The model: shapes, causality, attention backends, LoRA, dtypes, input errors."""

import pytest
import torch

from streamformer import StreamFormerModel, StreamFormerVisionModel
from streamformer.testing import tiny_config, tiny_model


def test_output_granularities(video_tensor):
    out = tiny_model()(video_tensor, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 7, 16, 32)
    assert out.pooler_output.shape == (2, 7, 32)
    assert torch.equal(out.global_output, out.pooler_output[:, -1])
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, 7, 16, 32)


@torch.no_grad()
def test_frame_t_never_sees_later_frames(video_tensor):
    model = tiny_model()
    ref = model(video_tensor)
    changed = video_tensor.clone()
    changed[:, 4:] = torch.randn_like(changed[:, 4:])
    out = model(changed)
    assert torch.equal(out.last_hidden_state[:, :4], ref.last_hidden_state[:, :4])
    assert torch.equal(out.pooler_output[:, :4], ref.pooler_output[:, :4])
    assert not torch.allclose(out.pooler_output[:, 4:], ref.pooler_output[:, 4:])
    # A prefix clip is the prefix of the longer clip's outputs.
    prefix = model(video_tensor[:, :4])
    torch.testing.assert_close(prefix.pooler_output, ref.pooler_output[:, :4], atol=1e-5, rtol=0)


@torch.no_grad()
def test_bidirectional_model_sees_the_future(video_tensor):
    model = tiny_model(enable_causal_temporal=False)
    ref = model(video_tensor).pooler_output
    changed = video_tensor.clone()
    changed[:, -1] = 0
    assert not torch.allclose(model(changed).pooler_output[:, 0], ref[:, 0])
    with pytest.raises(ValueError, match="cannot stream"):
        model.new_cache()


@torch.no_grad()
def test_temporal_branch_is_gated(video_tensor):
    """With every gate at 0 a frame's output depends on that frame alone."""
    model = tiny_model()
    for layer in model.encoder.layer:
        layer.temporal_attention_gating.zero_()
    model.embeddings.time_embeddings.zero_()
    clip = model(video_tensor[:, :3]).last_hidden_state
    single = torch.cat([model(video_tensor[:, t : t + 1]).last_hidden_state for t in range(3)], dim=1)
    torch.testing.assert_close(clip, single, atol=1e-5, rtol=0)


def test_gate_starts_at_zero_and_lora_is_identity():
    model = StreamFormerVisionModel(tiny_config())
    for layer in model.encoder.layer:
        assert layer.temporal_attention_gating.item() == 0.0
        assert layer.attention.attention.qkv.lora_B["default"].weight.abs().sum() == 0
        assert layer.attention.attention.qkv.lora_A["default"].weight.abs().sum() > 0


def test_gate_init_is_configurable_for_from_scratch_training():
    model = StreamFormerVisionModel(tiny_config(temporal_gate_init=0.5))
    assert all(layer.temporal_attention_gating.item() == 0.5 for layer in model.encoder.layer)


@torch.no_grad()
def test_eager_equals_sdpa(video_tensor):
    model = tiny_model()
    sdpa = model(video_tensor, max_frames=3, sink_frames=1)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model(video_tensor, max_frames=3, sink_frames=1)
    torch.testing.assert_close(eager.last_hidden_state, sdpa.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(video_tensor).pooler_output, tiny_model()(video_tensor).pooler_output, atol=1e-5, rtol=0)


@torch.no_grad()
def test_merge_lora_keeps_outputs(video_tensor):
    model = tiny_model()
    ref = model(video_tensor).last_hidden_state
    model.merge_lora()
    assert not model.config.add_lora_spatial
    assert not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(model(video_tensor).last_hidden_state, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_bf16_runs_close_to_fp32(video_tensor):
    model = tiny_model()
    ref = model(video_tensor).pooler_output
    out = model.to(torch.bfloat16)(video_tensor.bfloat16())
    assert out.pooler_output.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.pooler_output.float(), ref, dim=-1)
    assert cos.min() > 0.98


@torch.no_grad()
def test_other_resolution_resizes_position_table():
    model = tiny_model()
    out = model(torch.randn(1, 2, 3, 48, 32))  # 6x4 patch grid, not square
    assert out.last_hidden_state.shape == (1, 2, 24, 32)
    table = model.embeddings.spatial_positions(6, 4)
    assert table.shape == (1, 24, 32)
    # Rows of the resized table follow image rows: a table constant along columns stays so.
    model.embeddings.position_embeddings.copy_(torch.arange(4.0).repeat_interleave(4)[None, :, None].expand(1, 16, 32))
    grid = model.embeddings.spatial_positions(6, 4)[0, :, 0].view(6, 4)
    assert torch.allclose(grid, grid[:, :1].expand(6, 4))


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((2, 3, 32, 32), torch.float32, r"\[B, T, C, H, W\]"),
        ((32,), torch.float32, r"\[B, T, C, H, W\]"),
        ((1, 2, 4, 32, 32), torch.float32, "channels"),
        ((1, 2, 3, 30, 32), torch.float32, "divisible by the patch"),
        ((1, 0, 3, 32, 32), torch.float32, "no frames"),
        ((1, 2, 3, 32, 32), torch.uint8, "floating point"),
    ],
)
def test_bad_input_is_a_clear_error(shape, dtype, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_model()(torch.zeros(shape, dtype=dtype))


def test_frames_must_come_as_a_tensor():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        tiny_model()([torch.zeros(1, 3, 32, 32)])


def test_hidden_dropout_acts_in_training_only(video_tensor):
    plain, dropped = tiny_model(), tiny_model(hidden_dropout_prob=0.5)
    with torch.no_grad():
        expected = plain(video_tensor).last_hidden_state
        torch.testing.assert_close(dropped(video_tensor).last_hidden_state, expected)  # eval: no dropout
        dropped.train()
        first, second = dropped(video_tensor).last_hidden_state, dropped(video_tensor).last_hidden_state
    assert not torch.allclose(first, expected) and not torch.allclose(first, second)


def test_training_forward_backward(video_tensor):
    model = tiny_model().train()
    out = model(video_tensor)
    out.pooler_output.square().mean().backward()
    layer = model.encoder.layer[0]
    assert layer.temporal_attention_gating.grad is not None
    assert layer.attention.attention.qkv.lora_A["default"].weight.grad.abs().sum() > 0


def test_dual_encoder_logits_and_sigmoid_loss(video_tensor):
    text = dict(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=8,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = StreamFormerModel(tiny_config(text_config=text)).eval()
    ids = torch.randint(3, 50, (2, 8))
    out = model(video_tensor, ids, return_loss=True)
    assert out.logits_per_video.shape == (2, 2)
    logits = out.logits_per_text
    logsig = torch.nn.functional.logsigmoid
    expected = -(logsig(logits[0, 0]) + logsig(logits[1, 1]) + logsig(-logits[0, 1]) + logsig(-logits[1, 0])) / 2
    torch.testing.assert_close(out.loss, expected)
    assert model.logit_scale.item() == pytest.approx(2.302585, abs=1e-5)
    with pytest.raises(ValueError, match="text_config"):
        StreamFormerModel(tiny_config())


@torch.no_grad()
def test_attention_batches_past_the_cuda_grid_limit_go_in_slices(monkeypatch):
    """B x N temporal sequences above SDPA_MAX_BATCH (65,535 on CUDA) are attended in slices."""
    from streamformer import model as modeling

    model = tiny_model()
    video = torch.randn(3, 4, 3, 32, 32)  # 3 clips x 16 patches = 48 temporal sequences
    whole = model(video).last_hidden_state
    batches = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(modeling, "SDPA_MAX_BATCH", 20)
    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", lambda q, *a, **k: batches.append(len(q)) or sdpa(q, *a, **k))
    sliced = model(video).last_hidden_state
    assert max(batches) == 20 and batches.count(8) == model.config.num_hidden_layers  # 48 = 20 + 20 + 8 per block
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=0)
