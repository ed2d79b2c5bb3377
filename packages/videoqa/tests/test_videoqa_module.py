"""Training stages on a task only the video answers (a bright clip: "red", a dark one: "blue"):
what each stage trains, that the answer is learned from the frames, and the export."""

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from videoqa_helpers import tiny_lm

from streamformer.testing import tiny_model
from streamformer_videoqa import StreamFormerForVideoQA, expand_placeholder
from streamformer_videoqa.data import collate_conversations, encode_conversation
from streamformer_videoqa.module import VideoQATraining

FRAMES = 2


@pytest.fixture
def model_dir(tokenizer, tmp_path):
    model = StreamFormerForVideoQA.from_parts(tiny_model(), tiny_lm(len(tokenizer)), tokenizer)
    model.save_pretrained(tmp_path / "init")
    return tmp_path / "init"


def items(tokenizer, model_config, count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        bright = i % 2 == 0
        turns = [{"from": "human", "value": "<video> what is the ball"}, {"from": "gpt", "value": "red" if bright else "blue"}]
        ids, labels = encode_conversation(turns, tokenizer, "<video>", "chat")
        at, n = ids.index(model_config.video_token_id), FRAMES * model_config.tokens_per_frame
        ids = expand_placeholder(ids, model_config.video_token_id, n)
        labels = [*labels[:at], *[-100] * n, *labels[at + 1 :]]
        level = 0.6 if bright else -0.6
        pixels = (level + 0.3 * torch.randn(FRAMES, 3, 32, 32, generator=g)).clamp(-1, 1)
        out.append({"id": str(i), "input_ids": ids, "labels": labels, "pixel_values": pixels, "bright": bright})
    return out


def train(module: VideoQATraining, data: list[dict], epochs: int) -> None:
    loader = DataLoader(data, batch_size=8, shuffle=True, collate_fn=functools.partial(collate_conversations, pad_token_id=0))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, loader)


@torch.no_grad()
def accuracy(model: StreamFormerForVideoQA, tokenizer, data: list[dict]) -> float:
    red, blue = tokenizer.convert_tokens_to_ids(["red", "blue"])
    right = 0
    for item in data:
        prompt = torch.tensor([item["input_ids"][: item["labels"].index(red if item["bright"] else blue)]])
        answer = int(
            model.eval().generate(prompt, item["pixel_values"][None], max_new_tokens=1, do_sample=False, pad_token_id=0)[0, 0]
        )
        right += answer == (red if item["bright"] else blue)
    return right / len(data)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("stage", ["projector", "lora", "full"])
def test_each_stage_trains_its_parts_and_learns_the_answer_from_the_video(stage, tokenizer, model_dir, tmp_path):
    L.seed_everything(0)
    module = VideoQATraining(str(model_dir), stage=stage, lr=1e-2 if stage == "projector" else 3e-3, warmup_ratio=0.1)
    config = module.model.config
    before = snapshot(module)
    train(module, items(tokenizer, config, 32, seed=0), epochs=12)
    moved = {name.split(".")[1] for name, p in module.named_parameters() if not torch.equal(p, before[name])}
    lora = {name for name, p in module.named_parameters() if "lora_" in name and not torch.equal(p, before[name])}
    assert moved == ({"projector"} if stage == "projector" else {"projector", "language_model"})
    assert bool(lora) == (stage == "lora")
    if stage == "lora":  # the LM's own weights stay; only its adapters move
        assert all(torch.equal(p, before[n]) for n, p in module.named_parameters() if "language_model" in n and "lora_" not in n)
    held_out = items(tokenizer, config, 16, seed=1)
    assert accuracy(module.model, tokenizer, held_out) >= 0.9  # chance: 0.5 (the question is always the same)
    module.export(tmp_path / "exported")
    exported = StreamFormerForVideoQA.from_pretrained(tmp_path / "exported").eval()
    probe = collate_conversations(held_out[:4], 0)
    with torch.no_grad():
        expected = module.model.eval()(probe["input_ids"], probe["pixel_values"], attention_mask=probe["attention_mask"]).logits
        got = exported(probe["input_ids"], probe["pixel_values"], attention_mask=probe["attention_mask"]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_an_unknown_stage_is_refused(model_dir):
    with pytest.raises(ValueError, match="stage must be one of"):
        VideoQATraining(str(model_dir), stage="everything")


def test_validation_survives_a_batch_whose_every_item_was_skipped(tokenizer, model_dir):
    module = VideoQATraining(str(model_dir))
    data = [None, None, *items(tokenizer, module.model.config, 2, seed=0)]
    loader = DataLoader(data, batch_size=2, collate_fn=functools.partial(collate_conversations, pad_token_id=0))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, loader)
    assert metrics["data/val_skipped"] == 2
    with torch.no_grad():
        assert metrics["val/loss"] == pytest.approx(float(module(collate_conversations(data[2:], 0))), rel=1e-5)
