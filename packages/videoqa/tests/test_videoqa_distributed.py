"""Two CPU processes (gloo) holding answers of different lengths: the loss and the gradients DDP
produces equal those of one process on the whole batch (the mean over every answer token)."""

import os
import socket
from datetime import timedelta

import lightning as L
import numpy as np
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader
from videoqa_helpers import tiny_lm, word_tokenizer

from streamformer.testing import tiny_model
from streamformer_videoqa import StreamFormerForVideoQA, expand_placeholder
from streamformer_videoqa.data import collate_conversations, encode_conversation
from streamformer_videoqa.module import VideoQATraining

ANSWERS = [["red", "a man walks left right runs"], ["the blue ball", "left"]]  # per rank: 1 + 6 and 3 + 1 words


def rank_batch(tokenizer, config, answers: list[str], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    items = []
    for answer in answers:
        turns = [{"from": "human", "value": "<video> what is the ball"}, {"from": "gpt", "value": answer}]
        ids, labels = encode_conversation(turns, tokenizer, "<video>", "chat")
        at, n = ids.index(config.video_token_id), 2 * config.tokens_per_frame
        items.append({"id": answer, "input_ids": expand_placeholder(ids, config.video_token_id, n),
                      "labels": [*labels[:at], *[-100] * n, *labels[at + 1 :]],
                      "pixel_values": torch.randn(2, 3, 32, 32, generator=g).clamp(-1, 1)})  # fmt: skip
    return collate_conversations(items, pad_token_id=0)


class Gradients(Callback):
    def on_before_optimizer_step(self, trainer, module, optimizer):  # after DDP's all-reduce
        self.grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, model_dir: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    module = VideoQATraining(model_dir, stage="full")
    batch = rank_batch(word_tokenizer_with_video(), module.model.config, ANSWERS[rank], seed=rank)
    grads = Gradients()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=60)),
                        callbacks=[grads], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)  # fmt: skip
    trainer.fit(module, DataLoader([batch], batch_size=None))
    results[rank] = (grads.grads, float(trainer.callback_metrics["train/loss"]))


def word_tokenizer_with_video():
    tokenizer = word_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    return tokenizer


def test_ddp_loss_and_gradients_equal_one_process_on_the_global_batch(tmp_path):
    tokenizer = word_tokenizer_with_video()
    StreamFormerForVideoQA.from_parts(tiny_model(), tiny_lm(len(tokenizer)), tokenizer).save_pretrained(tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, str(tmp_path / "m"), results), nprocs=2, join=True)

    module = VideoQATraining(str(tmp_path / "m"), stage="full")
    parts = [rank_batch(tokenizer, module.model.config, ANSWERS[rank], seed=rank) for rank in (0, 1)]
    width = max(p["input_ids"].shape[1] for p in parts)
    pad = {"input_ids": 0, "labels": -100, "attention_mask": 0}
    whole = {key: torch.cat([torch.nn.functional.pad(p[key], (0, width - p[key].shape[1]), value=v) for p in parts])
             for key, v in pad.items()}  # fmt: skip
    whole["pixel_values"] = torch.cat([p["pixel_values"] for p in parts])
    loss = module(whole)
    loss.backward()
    counts = [int((p["labels"][:, 1:] != -100).sum()) for p in parts]
    assert counts[0] != counts[1]  # a mean per rank would not be the global mean
    for rank in (0, 1):
        grads, logged = results[rank]
        assert np.isclose(logged, float(loss), atol=1e-5)
        assert grads.keys() == {n for n, p in module.named_parameters() if p.grad is not None}
        for name, grad in grads.items():  # float32 sums in another order: ~1e-5 apart; a missed all-reduce: ~1 apart
            torch.testing.assert_close(grad, dict(module.named_parameters())[name].grad, atol=1e-4, rtol=1e-3)
