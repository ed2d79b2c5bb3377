"""The video-LM connector: pooling rule, token budget, placeholder splice, causality of the tower,
save/load as one folder, greedy generation."""

import pytest
import torch
import torch.nn.functional as F
from videoqa_helpers import tiny_lm

from streamformer.testing import tiny_model
from streamformer_videoqa import StreamFormerForVideoQA, expand_placeholder, pool_patches


def build(tokenizer, tmp_path=None, **config):
    tower, lm = tiny_model(), tiny_lm(len(tokenizer))
    if tmp_path is not None:  # through folders, as a user would
        tower.save_pretrained(tmp_path / "tower")
        lm.save_pretrained(tmp_path / "lm")
        tower, lm = str(tmp_path / "tower"), str(tmp_path / "lm")
    model = StreamFormerForVideoQA.from_parts(tower, lm, tokenizer, **config)
    torch.manual_seed(1)
    for p in model.projector.parameters():  # a trained-looking projector: every path carries signal
        p.data.normal_(0, 0.5)
    return model.eval()


def prompt_ids(tokenizer, model, frames: int, question: str = "what is the person doing") -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<video> {question}"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([expand_placeholder(ids, model.config.video_token_id, frames * model.config.tokens_per_frame)])


def test_pooling_is_2x2_averaging_and_the_original_bilinear_halving():
    tokens = torch.randn(2, 3, 196, 8)
    pooled = pool_patches(tokens)
    grid = tokens.reshape(6, 14, 14, 8).permute(0, 3, 1, 2)
    bilinear = F.interpolate(grid, size=(7, 7), mode="bilinear", align_corners=False)
    assert pooled.shape == (2, 3, 49, 8)
    torch.testing.assert_close(pooled, bilinear.permute(0, 2, 3, 1).reshape(2, 3, 49, 8))
    # An odd grid rounds up; the edge cells average the patches they cover.
    odd = torch.arange(9.0).reshape(1, 1, 9, 1)  # 3x3: rows 0 1 2 / 3 4 5 / 6 7 8
    assert pool_patches(odd).flatten().tolist() == [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0]


def test_token_budget_and_splice(tokenizer):
    model = build(tokenizer)
    assert model.config.tokens_per_frame == 4  # a 4x4 patch grid pooled to 2x2
    frames = torch.randn(1, 3, 3, 32, 32)
    ids = prompt_ids(tokenizer, model, frames=3)
    slots = ids[0] == model.config.video_token_id
    assert int(slots.sum()) == 12
    with torch.no_grad():
        embeds = model.embed_inputs(ids, frames)
        visual = model.encode_video(frames)
        text = model.get_input_embeddings()(ids)
    assert visual.shape == (1, 12, 32)
    torch.testing.assert_close(embeds[0, slots], visual[0])  # frame-major, in order
    torch.testing.assert_close(embeds[0, ~slots], text[0, ~slots])
    # Frame t's tokens are the projected, pooled patches of frame t.
    hidden = model.vision_tower(frames).last_hidden_state
    frame_1 = pool_patches(model.projector(hidden[:, 1:2]))[0, 0]
    torch.testing.assert_close(visual[0, 4:8], frame_1)


def test_bad_prompts_are_clear_errors(tokenizer):
    model = build(tokenizer)
    video = model.config.video_token_id
    with pytest.raises(ValueError, match=r"exactly one video placeholder.*found 0"):
        expand_placeholder([5, 6], video, 4)
    with pytest.raises(ValueError, match="found 2"):
        expand_placeholder([video, 5, video], video, 4)
    ids = prompt_ids(tokenizer, model, frames=2)
    with pytest.raises(ValueError, match=r"needs 12 video placeholders \(3 frames x 4\), got \[8\]"):
        model.embed_inputs(ids, torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="no frames"):
        model.embed_inputs(ids)


@torch.no_grad()
def test_an_image_is_the_first_frame_of_a_clip(tokenizer):
    """The tower is causal: frame 0 of a clip sees only itself, so a 1-frame clip (an image)
    gives the same tokens, and later frames never change earlier ones."""
    model = build(tokenizer)
    clip = torch.randn(1, 4, 3, 32, 32)
    tokens = model.encode_video(clip)
    torch.testing.assert_close(model.encode_video(clip[:, :1]), tokens[:, :4], atol=1e-5, rtol=0)
    changed = clip.clone()
    changed[:, 2:] = torch.randn(1, 2, 3, 32, 32)
    torch.testing.assert_close(model.encode_video(changed)[:, :8], tokens[:, :8], atol=1e-5, rtol=0)


@torch.no_grad()
def test_streamed_frames_give_the_tokens_of_the_whole_clip(tokenizer):
    model = build(tokenizer)
    clip = torch.randn(1, 6, 3, 32, 32)
    cache = model.vision_tower.new_cache()
    streamed = torch.cat([model.encode_video(clip[:, a:b], cache=cache) for a, b in ((0, 1), (1, 4), (4, 6))], dim=1)
    torch.testing.assert_close(streamed, model.encode_video(clip), atol=1e-5, rtol=0)


@torch.no_grad()
def test_one_folder_round_trip_and_greedy_generation(tokenizer, tmp_path):
    model = build(tokenizer, tmp_path)
    assert tokenizer.convert_ids_to_tokens(model.config.video_token_id) == "<video>"
    frames = torch.randn(1, 2, 3, 32, 32)
    ids = prompt_ids(tokenizer, model, frames=2)
    model.save_pretrained(tmp_path / "videoqa")
    assert sorted(p.name for p in (tmp_path / "videoqa").iterdir()) == ["config.json", "model.safetensors"]
    loaded = StreamFormerForVideoQA.from_pretrained(tmp_path / "videoqa").eval()
    torch.testing.assert_close(loaded(ids, frames).logits, model(ids, frames).logits)
    # generate == arg-max decoding by hand, re-running the whole sequence each step
    out = loaded.generate(ids, frames, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    embeds, expected = loaded.embed_inputs(ids, frames), []
    for _ in range(5):
        token = loaded.language_model(inputs_embeds=embeds).logits[0, -1].argmax()
        expected.append(int(token))
        embeds = torch.cat([embeds, loaded.get_input_embeddings()(token.view(1, 1))], dim=1)
    assert out[0].tolist() == expected


def test_the_tower_stays_frozen_and_in_eval_mode(tokenizer, tmp_path):
    built = build(tokenizer)
    built.save_pretrained(tmp_path / "m")
    for model in (built, StreamFormerForVideoQA.from_pretrained(tmp_path / "m")):  # loading makes new parameters
        model.train()
        assert not model.vision_tower.training and model.language_model.training
        trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"projector", "language_model"}
