"""Conversation data: item checks, prompts and label masks computed by hand, the placeholder
expansion, skipped items, batching, precomputed tower features."""

import json

import numpy as np
import pytest
import torch
from videoqa_helpers import tiny_lm

from streamformer.testing import tiny_model
from streamformer.video import write_video
from streamformer_videoqa import StreamFormerForVideoQA
from streamformer_videoqa.data import (
    IGNORE,
    ConversationDataset,
    MediaOptions,
    collate_conversations,
    encode_conversation,
    precompute_features,
    read_items,
)
from streamformer_videoqa.evaluate import answer_items


@pytest.fixture
def video_tokenizer(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    return tokenizer


def conversation(*texts):
    return [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(texts)]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_labels_are_the_answers_as_the_template_renders_them(video_tokenizer):
    tok = video_tokenizer
    turns = conversation("<video> what is the person doing", "a man walks left", "what is the ball", "red")
    got_ids, labels = encode_conversation(turns, tok, "<video>", "chat")
    expected = ids(tok, "<|im_start|> user <video> what is the person doing <|im_end|> <|im_start|> assistant a man walks left <|im_end|>"
                   " <|im_start|> user what is the ball <|im_end|> <|im_start|> assistant red <|im_end|>")  # fmt: skip
    assert got_ids == expected
    learned = [token for token in labels if token != IGNORE]
    assert learned == ids(tok, "a man walks left <|im_end|> red <|im_end|>")
    assert [i for i, token in enumerate(labels) if token != IGNORE] == [*range(11, 16), *range(25, 27)]


def test_plain_prompt_is_the_placeholder_then_the_caption(video_tokenizer):
    tok = video_tokenizer
    got_ids, labels = encode_conversation(conversation("<image>\ndescribe it", "a man runs"), tok, "<video>", "plain")
    video, caption = tok.convert_tokens_to_ids("<video>"), ids(tok, "a man runs")
    assert got_ids == [video, *caption, tok.eos_token_id]
    assert labels == [IGNORE, *caption, tok.eos_token_id]


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ({"id": "a", "video": "v.mp4", "conversations": conversation("what", "x")}, r"placeholders per turn \[0, 0\]"),
        ({"id": "b", "video": "v.mp4", "conversations": conversation("<video> <video>", "x")}, r"\[2, 0\]"),
        ({"id": "c", "conversations": conversation("<video> what", "x")}, "no media"),
        ({"id": "d", "video": "v.mp4", "conversations": conversation("<video> what", " ")}, "turn 1 has an empty"),
        ({"id": "e", "conversations": conversation("what")}, "1 turns"),
        ({"id": "f", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}, "turn 0 is from 'gpt'"),
    ],
)
def test_unusable_items_stop_the_read_named(tmp_path, item, why):
    good = {"id": "ok", "video": "v.mp4", "conversations": conversation("<video> what", "x")}
    (tmp_path / "items.json").write_text(json.dumps([good, item]))
    with pytest.raises(ValueError, match=rf"1 of 2 items .*{item['id']}: .*{why}"):
        read_items(tmp_path / "items.json")


def test_dataset_expands_the_placeholder_and_skips_what_it_cannot_use(video_tokenizer, tmp_path):
    tok = video_tokenizer
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mp4", frames, fps=6)
    items = [
        {"id": "ok", "video": "v.mp4", "conversations": conversation("<video> what is the person doing", "a man walks left")},
        {"id": "gone", "video": "missing.mp4", "conversations": conversation("<video> what", "red")},
        {"id": "long", "video": "v.mp4", "conversations": conversation("<video> " + "what " * 40, "red")},
    ]
    (tmp_path / "items.json").write_text(json.dumps([*items, {"id": "text", "conversations": conversation("what", "red")}]))
    with pytest.raises(ValueError, match=r"mixes \['text', 'video'\] items"):
        ConversationDataset(tmp_path / "items.json", tmp_path, tok)
    (tmp_path / "items.json").write_text(json.dumps(items))
    data = ConversationDataset(tmp_path / "items.json", tmp_path, tok, options=MediaOptions(4, 32, 4), max_length=40)
    first = data[0]
    video = tok.convert_tokens_to_ids("<video>")
    at = first["input_ids"].index(video)
    assert first["input_ids"][at : at + 16] == [video] * 16 and first["input_ids"].count(video) == 16
    assert first["labels"][at : at + 16] == [IGNORE] * 16
    assert [t for t in first["labels"] if t != IGNORE] == ids(tok, "a man walks left <|im_end|>")
    assert first["pixel_values"].shape == (4, 3, 32, 32)
    assert data[1] is None and data[2] is None and data.skipped == 2  # an unreadable video; 63 tokens > 40
    batch = collate_conversations(
        [first, None, {**first, "input_ids": first["input_ids"][:-2], "labels": first["labels"][:-2]}], 0
    )
    assert batch["skipped"] == 1 and batch["input_ids"].shape == (2, len(first["input_ids"]))
    assert batch["attention_mask"][1].tolist() == [1] * (len(first["input_ids"]) - 2) + [0, 0]
    assert batch["labels"][1, -2:].tolist() == [IGNORE, IGNORE] and batch["pixel_values"].shape == (2, 4, 3, 32, 32)
    text = {"id": "t", "input_ids": [5, 6], "labels": [5, 6], "pixel_values": None}
    with pytest.raises(ValueError, match="mixes frame shapes"):
        collate_conversations([first, text], 0)
    with pytest.raises(FileNotFoundError, match="media folder"):
        ConversationDataset(tmp_path / "items.json", tmp_path / "nowhere", tok)
    assert torch.equal(batch["input_ids"][0], torch.tensor(first["input_ids"]))


def test_precomputed_tower_features_stand_in_for_the_frames(video_tokenizer, tmp_path):
    tok = video_tokenizer
    model = StreamFormerForVideoQA.from_parts(tiny_model(), tiny_lm(len(tok)), tok).eval()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}.mp4", rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=4)
    items = [
        {"id": name, "video": f"{name}.mp4", "conversations": conversation("<video> what is the ball", answer)}
        for name, answer in (("a", "red"), ("b", "blue"), ("gone", "red"))
    ]
    (tmp_path / "items.json").write_text(json.dumps(items))
    features = precompute_features(model, [item["video"] for item in items], tmp_path, clip_length=3, batch_size=1)
    assert sorted(features) == ["a.mp4", "b.mp4"] and features["a.mp4"].shape == (3, 16, 32)  # the unreadable one left out
    options = MediaOptions(3, 32, model.config.tokens_per_frame)
    from_frames = ConversationDataset(tmp_path / "items.json", tmp_path, tok, options=options)
    from_features = ConversationDataset(tmp_path / "items.json", tmp_path, tok, options=options, features=features)
    assert from_features[2] is None and from_features.skipped == 1  # no features: skipped and counted
    frames = collate_conversations([from_frames[0], from_frames[1]], 0)
    stored = collate_conversations([from_features[0], from_features[1]], 0)
    assert "pixel_values" not in stored and stored["vision_features"].shape == (2, 3, 16, 32)
    with torch.no_grad():
        expected = model(frames["input_ids"], frames["pixel_values"], frames["attention_mask"]).logits
        got = model(stored["input_ids"], attention_mask=stored["attention_mask"], vision_features=stored["vision_features"])
    torch.testing.assert_close(got.logits, expected, atol=1e-5, rtol=0)
    questions = [{"id": "q", "video": "a.mp4", "question": "what is the ball", "answer": "red"}]
    replies = [answer_items(model, tok, questions, tmp_path, 3, features=f) for f in (None, features)]
    assert replies[0][0]["reply"] == replies[1][0]["reply"]
