"""Checkpoints: SigLIP initialisation, the original layout key for key, our own format."""

import argparse
import pickle

import pytest
import torch
import torch.nn.functional as F
from backbone_helpers import original_layout_checkpoint, tiny_siglip
from safetensors.torch import load_file, save_file
from transformers import AutoModel, TimesformerConfig, TimesformerModel

from streamformer import StreamFormerConfig, StreamFormerModel, StreamFormerVisionModel
from streamformer.checkpoints import detect_format, from_siglip, load_model, load_original
from streamformer.testing import tiny_model


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
@torch.no_grad()
def test_siglip_init_is_siglip_per_frame(tmp_path, act):
    siglip = tiny_siglip(hidden_act=act)
    siglip.save_pretrained(tmp_path / "siglip")
    assert detect_format(tmp_path / "siglip") == "siglip"
    model = from_siglip(tmp_path / "siglip", num_frames=8, hidden_act=act).eval()
    assert isinstance(model, StreamFormerModel)
    vision = model.timesformer
    assert all(layer.temporal_attention_gating.item() == 0 for layer in vision.encoder.layer)
    assert vision.encoder.layer[0].temporal_dense.bias.abs().sum() > 0  # biases drawn too, as the original
    vision.embeddings.time_embeddings.zero_()

    video = torch.randn(2, 5, 3, 32, 32)
    ours = vision(video)
    ref = siglip.vision_model(pixel_values=video.flatten(0, 1))
    torch.testing.assert_close(ours.last_hidden_state.flatten(0, 1), ref.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output.flatten(0, 1), ref.pooler_output, atol=1e-5, rtol=0)

    ids = torch.randint(3, 100, (2, 16))
    torch.testing.assert_close(model.get_text_features(ids), siglip.get_text_features(input_ids=ids).pooler_output)
    assert model.logit_scale.item() == pytest.approx(siglip.logit_scale.item())
    assert model.logit_bias.item() == pytest.approx(siglip.logit_bias.item())


@torch.no_grad()
def test_siglip_vision_only_checkpoint(tmp_path):
    tiny_siglip().vision_model.save_pretrained(tmp_path / "vision")
    model = from_siglip(tmp_path / "vision", num_frames=8, add_lora_spatial=False)
    assert isinstance(model, StreamFormerVisionModel) and not model.config.add_lora_spatial
    with pytest.raises(ValueError, match="vision tower only"):
        from_siglip(tmp_path / "vision", with_text=True)


def _attention(x, w, b, out_w, out_b, heads, causal, lora=None, out_lora=None):
    s, length, d = x.shape
    qkv = F.linear(x, w, b) + (F.linear(F.linear(x, lora[0]), lora[1]) if lora else 0)
    q, k, v = qkv.view(s, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(s, length, d)
    return F.linear(out, out_w, out_b) + (F.linear(F.linear(out, out_lora[0]), out_lora[1]) if out_lora else 0)


def original_forward(sd, video, layers, heads=4):
    """The original forward, written from the reference text: patch-major token layout n*T + t."""
    b, t = video.shape[:2]
    x = (
        F.conv2d(
            video.flatten(0, 1),
            sd["embeddings.patch_embeddings.projection.weight"],
            sd["embeddings.patch_embeddings.projection.bias"],
            stride=8,
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = x + sd["embeddings.position_embeddings"]
    n, d = x.shape[1:]
    x = x.view(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d) + sd["embeddings.time_embeddings"][:, :t]
    x = x.reshape(b, n * t, d)

    def ln(v, name):
        return F.layer_norm(v, (d,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    for i in range(layers):
        p = f"encoder.layer.{i}."
        xt = ln(x.reshape(b * n, t, d), p + "temporal_layernorm")
        a = _attention(
            xt,
            sd[p + "temporal_attention.attention.qkv.weight"],
            sd[p + "temporal_attention.attention.qkv.bias"],
            sd[p + "temporal_attention.output.dense.weight"],
            sd[p + "temporal_attention.output.dense.bias"],
            heads,
            True,
        )
        r = F.linear(a.reshape(b, n * t, d), sd[p + "temporal_dense.weight"], sd[p + "temporal_dense.bias"])
        x1 = x + torch.tanh(sd[p + "temporal_attention_gating"]) * r
        xs = ln(x1.view(b, n, t, d).permute(0, 2, 1, 3).reshape(b * t, n, d), p + "layernorm_before")
        s = _attention(
            xs,
            sd[p + "attention.attention.qkv.weight"],
            sd[p + "attention.attention.qkv.bias"],
            sd[p + "attention.output.dense.weight"],
            sd[p + "attention.output.dense.bias"],
            heads,
            False,
            lora=(sd[p + "attention.attention.qkv_lora_a.weight"], sd[p + "attention.attention.qkv_lora_b.weight"]),
            out_lora=(sd[p + "attention.output.dense_lora_a.weight"], sd[p + "attention.output.dense_lora_b.weight"]),
        )
        x2 = x1 + s.view(b, t, n, d).permute(0, 2, 1, 3).reshape(b, n * t, d)
        h = F.gelu(
            F.linear(ln(x2, p + "layernorm_after"), sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"])
        )
        x = x2 + F.linear(h, sd[p + "output.dense.weight"], sd[p + "output.dense.bias"])
    x = ln(x, "post_layernorm")
    frames = x.view(b, n, t, d).permute(0, 2, 1, 3).reshape(b * t, n, d)
    pool = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    pool.load_state_dict({k.removeprefix("head.attention."): v for k, v in sd.items() if k.startswith("head.attention.")})
    y = pool(sd["head.probe"].expand(b * t, 1, d), frames, frames)[0]
    y = y + F.linear(
        F.gelu(F.linear(ln(y, "head.layernorm"), sd["head.mlp.fc1.weight"], sd["head.mlp.fc1.bias"])),
        sd["head.mlp.fc2.weight"],
        sd["head.mlp.fc2.bias"],
    )
    return frames.view(b, t, n, d), y[:, 0].view(b, t, d)


@pytest.mark.parametrize("prefix", ["", "timesformer."])
@torch.no_grad()
def test_original_checkpoint_key_for_key(tmp_path, prefix):
    state, _ = original_layout_checkpoint(tmp_path, num_layers=12, prefix=prefix)
    assert len(state) == 329
    assert detect_format(tmp_path) == "original"
    model, report = load_original(tmp_path)
    assert report.ok, str(report)
    assert sorted(report.ignored) == sorted(f"encoder.layer.{i}.temporal_attention.attention.mask" for i in range(12))
    assert model.config.add_lora_spatial and model.config.lora_rank == 4
    ours = model.state_dict()
    assert len(ours) == 329 - 12
    plain = {k.removeprefix(prefix): v for k, v in state.items()}
    assert torch.equal(ours["encoder.layer.3.temporal_dense.weight"], plain["encoder.layer.3.temporal_dense.weight"])
    assert torch.equal(
        ours["encoder.layer.3.attention.attention.qkv.base_layer.weight"], plain["encoder.layer.3.attention.attention.qkv.weight"]
    )
    assert torch.equal(
        ours["encoder.layer.3.attention.output.dense.lora_B.default.weight"],
        plain["encoder.layer.3.attention.output.dense_lora_b.weight"],
    )


@torch.no_grad()
def test_original_forward_reproduced_and_lora_merge_is_exact(tmp_path):
    state, _ = original_layout_checkpoint(tmp_path, num_layers=3)
    video = torch.randn(2, 5, 3, 32, 32)
    spatial, pooled = original_forward(state, video, layers=3)
    kept, _ = load_original(tmp_path)
    merged, report = load_original(tmp_path, merge_lora=True)
    assert report.ok and not merged.config.add_lora_spatial
    assert not any("lora" in k for k in merged.state_dict())
    for model in (kept.eval(), merged.eval()):
        out = model(video)
        torch.testing.assert_close(out.last_hidden_state, spatial, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pooler_output, pooled, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_original_without_lora_and_bad_keys_are_named(tmp_path):
    state, config = original_layout_checkpoint(tmp_path / "plain", num_layers=2, lora=False)
    model, report = load_original(tmp_path / "plain")
    assert report.ok and not model.config.add_lora_spatial

    del state["encoder.layer.1.temporal_dense.bias"]
    state["encoder.layer.1.surprise.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "weights.bin")
    with pytest.raises(ValueError, match=r"(?s)encoder\.layer\.1\.temporal_dense\.bias.*encoder\.layer\.1\.surprise\.weight"):
        load_original(tmp_path / "weights.bin", config=config)
    _, report = load_original(tmp_path / "weights.bin", config=config, strict=False)
    assert report.missing == ["encoder.layer.1.temporal_dense.bias"]
    assert report.unexpected == ["encoder.layer.1.surprise.weight"]


@torch.no_grad()
def test_training_checkpoint_with_heads(tmp_path):
    state, config = original_layout_checkpoint(tmp_path / "ckpt", num_layers=2, prefix="timesformer.")
    state["text_encoder.text_model.head.weight"] = torch.zeros(2, 2)
    state["task_heads.Kinetics.logit_scale"] = torch.tensor(1.0)
    state["logit_scale"] = torch.tensor(1.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    optimizer.step()  # the layout of the original's `utils.save_model`, argparse options included
    checkpoint = {"model": state, "optimizer": optimizer.state_dict(), "epoch": 3, "scaler": {"scale": 65536.0},
                  "args": argparse.Namespace(lr=2e-5, output_dir="/out")}  # fmt: skip
    torch.save(checkpoint, tmp_path / "checkpoint-epoch_3.pth")
    _, report = load_original(tmp_path / "checkpoint-epoch_3.pth", config=config)
    assert report.ok
    assert {"text_encoder.text_model.head.weight", "task_heads.Kinetics.logit_scale", "logit_scale"} <= set(report.ignored)


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_loaded(tmp_path, capsys):
    _, config = original_layout_checkpoint(tmp_path, num_layers=1)
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_original(tmp_path / "evil.bin", config=config)
    assert "pickled code ran" not in capsys.readouterr().out


@torch.no_grad()
def test_save_pretrained_round_trip(tmp_path, video_tensor):
    model = tiny_model()
    model.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    assert detect_format(tmp_path / "ours") == "streamformer"
    for loaded in (StreamFormerVisionModel.from_pretrained(tmp_path / "ours"), AutoModel.from_pretrained(tmp_path / "ours")):
        assert isinstance(loaded, StreamFormerVisionModel)
        torch.testing.assert_close(loaded.eval()(video_tensor).pooler_output, model(video_tensor).pooler_output, atol=0, rtol=0)


def test_original_config_keys_of_transformers_are_accepted_and_strangers_named(tmp_path, caplog):
    _, config = original_layout_checkpoint(tmp_path, num_layers=1)
    config |= {"_name_or_path": "/ckpt", "_attn_implementation_autoset": True, "output_attentions": False,
               "tie_word_embeddings": True, "mystery_knob": 3}  # fmt: skip
    with caplog.at_level("WARNING", logger="streamformer.config"):
        ours = StreamFormerConfig.from_original(config)
    assert ours.num_hidden_layers == 1
    assert "['mystery_knob']" in caplog.text


# ---------------------------------------------------------------------------------------------
# Every public loading route: the converted model, or a refusal that says what to run


@torch.no_grad()
def test_original_checkpoint_loads_the_same_by_every_route(tmp_path, video_tensor, caplog):
    original_layout_checkpoint(tmp_path, num_layers=2)
    expected = load_original(tmp_path)[0].eval()(video_tensor)
    with caplog.at_level("WARNING", logger="streamformer.checkpoints"):
        routes = {
            "StreamFormerVisionModel.from_pretrained": StreamFormerVisionModel.from_pretrained(tmp_path),
            "AutoModel.from_pretrained": AutoModel.from_pretrained(tmp_path),
            "load_model (LoRA merged)": load_model(tmp_path),
        }
    assert caplog.text.count("converted the original StreamFormer checkpoint") == 3
    assert "ignored     encoder.layer.1.temporal_attention.attention.mask" in caplog.text  # convert's report
    for route, model in routes.items():
        assert isinstance(model, StreamFormerVisionModel) and not model.training, route
        out = model(video_tensor)
        torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0, msg=route)
        torch.testing.assert_close(out.pooler_output, expected.pooler_output, atol=1e-5, rtol=0, msg=route)
    assert routes["load_model (LoRA merged)"].config.add_lora_spatial is False
    interpolated = StreamFormerVisionModel.from_pretrained(tmp_path, temporal_position="interpolate", dtype=torch.bfloat16)
    assert interpolated.config.temporal_position == "interpolate" and interpolated.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="streamformer convert"):
        StreamFormerVisionModel.from_pretrained(tmp_path, device_map="auto")
    with pytest.raises(ValueError, match=r"StreamFormerVisionModel\.from_pretrained"):
        StreamFormerModel.from_pretrained(tmp_path)  # the original holds no text tower


def test_a_checkpoint_missing_one_tensor_is_refused_by_name(tmp_path, caplog):
    state, _ = original_layout_checkpoint(tmp_path / "original", num_layers=2)
    del state["encoder.layer.1.temporal_dense.bias"]
    save_file(state, tmp_path / "original" / "model.safetensors")
    for load in (StreamFormerVisionModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=r"encoder\.layer\.1\.temporal_dense\.bias"):
            load(tmp_path / "original")
    partial = StreamFormerVisionModel.from_pretrained(tmp_path / "original", allow_partial=True)
    assert isinstance(partial, StreamFormerVisionModel)

    tiny_model().save_pretrained(tmp_path / "ours")
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    del ours["encoder.layer.0.attention.output.dense.lora_A.default.weight"]
    ours["encoder.layer.0.stray.weight"] = torch.zeros(1)
    save_file(ours, tmp_path / "ours" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"(?s)dense\.lora_A\.default\.weight.*stray\.weight.*allow_partial=True"):
        StreamFormerVisionModel.from_pretrained(tmp_path / "ours")
    with caplog.at_level("WARNING", logger="streamformer.checkpoints"):
        StreamFormerVisionModel.from_pretrained(tmp_path / "ours", allow_partial=True)
    assert "encoder.layer.0.stray.weight" in caplog.text


def test_siglip_and_timesformer_checkpoints_are_refused_and_timesformer_still_loads_by_auto(tmp_path):
    tiny_siglip().save_pretrained(tmp_path / "siglip")
    with pytest.raises(ValueError, match="streamformer convert"):
        StreamFormerVisionModel.from_pretrained(tmp_path / "siglip")
    config = TimesformerConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=4, intermediate_size=64)  # fmt: skip
    TimesformerModel(config).save_pretrained(tmp_path / "timesformer")
    with pytest.raises(ValueError, match="TimeSformer checkpoint, not a StreamFormer"):
        StreamFormerVisionModel.from_pretrained(tmp_path / "timesformer")
    assert type(AutoModel.from_pretrained(tmp_path / "timesformer")) is TimesformerModel  # transformers' own, untouched


def test_text_config_special_tokens_lie_inside_the_vocabulary(tmp_path):
    """transformers' SiglipTextConfig defaults to CLIP's bos/eos (49406/49407) with a 32,000-word
    vocabulary; ours and every text config converted from SigLIP keep them inside it."""
    default = StreamFormerConfig(text_config={}).text_config
    ids = {name: getattr(default, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    assert ids == {"bos_token_id": None, "eos_token_id": 1, "pad_token_id": 1} and default.vocab_size == 32000
    siglip = tiny_siglip()
    siglip.config.text_config.bos_token_id, siglip.config.text_config.eos_token_id = 49406, 49407  # the library's defaults
    siglip.save_pretrained(tmp_path / "siglip")
    text = from_siglip(tmp_path / "siglip").config.text_config
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (None, 1, 0)
