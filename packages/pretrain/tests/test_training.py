"""Training through Lightning: one run end to end, a killed run that resumes exactly, and DDP
ranks that stay in step when one rank's batch is all broken."""

import os
import socket
from datetime import timedelta

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from streamformer_pretrain import MultiTaskDataModule, StreamFormerPretraining
from streamformer_pretrain.data import MultiTaskDataset

TINY = dict(
    image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, lora_rank=4, lora_alpha=4.0,
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
)  # fmt: skip


class Killed(Exception):
    pass


class Recorder(Callback):
    """Per optimizer step: the batch's task and a fingerprint of its pixels; kills at `kill_at`."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.steps, self.kill_at = [], kill_at

    def on_train_start(self, trainer, module):
        self.start = {name: p.detach().clone() for name, p in module.named_parameters()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append((trainer.global_step, batch["task"], round(batch["video"].double().sum().item(), 4)))
        if trainer.global_step == self.kill_at:
            raise Killed


def make(world, tmp_path, *callbacks, trainer_args=None, **model_args):
    data = MultiTaskDataModule(root=str(world.root), tasks=("ar", "grounding", "rvos"), num_frames=4, image_size=32, batch_size=4)
    module = StreamFormerPretraining(config=TINY, text_warmup_steps=5, lr=1e-3, **model_args)
    trainer = L.Trainer(
        **{"max_epochs": 2, "accelerator": "cpu", "devices": 1, **(trainer_args or {})},
        use_distributed_sampler=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=list(callbacks),
    )  # fmt: skip
    return data, module, trainer


def test_fit_trains_every_task_and_exports(world, tmp_path):
    from streamformer import StreamFormerVisionModel
    from streamformer_pretrain.cli import export
    from streamformer_pretrain.evaluate import evaluate, format_table

    recorder = Recorder()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    data, module, trainer = make(world, tmp_path, recorder, checkpoints, segmentation_loss="softmax")
    trainer.fit(module, data)
    assert {task for _, task, _ in recorder.steps} == {"ar", "grounding", "rvos"}
    assert trainer.global_step == len(recorder.steps)
    moved = {name for name, p in module.named_parameters() if not torch.equal(p, recorder.start[name])}
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert moved <= trainable  # the frozen text tower and base weights stay as they were
    assert any("lora_" in name for name in moved) and any(name.startswith("task_logits.rvos") for name in moved)
    export(str(tmp_path / "ckpt" / "last.ckpt"), str(tmp_path / "backbone"))
    backbone = StreamFormerVisionModel.from_pretrained(tmp_path / "backbone")
    torch.testing.assert_close(backbone.state_dict(), module.model.timesformer.state_dict())
    with pytest.warns(UserWarning, match="softmax-trained masks"):
        results = evaluate(module, world.root, num_frames=4, image_size=32)
    assert list(results) == ["AR top-1", "grounding mIoU"]  # no mask metric without a background score
    assert all(0 <= r["value"] <= 1 and 0 < r["chance"] < 1 for r in results.values())
    blind = results["grounding mIoU"]["blind"]
    assert 0 < blind <= 1 and f"scores {blind:.3f} mIoU" in format_table(results)


def test_evaluate_scores_the_masks_of_a_sigmoid_model(world):
    from streamformer_pretrain.evaluate import evaluate

    data = MultiTaskDataModule(root=str(world.root), tasks=("vis", "rvos"), num_frames=4, image_size=32, batch_size=4)
    module = StreamFormerPretraining(config=TINY, segmentation_loss="sigmoid")
    module.build(data, warm_up_text=False)
    results = evaluate(module, world.root, num_frames=4, image_size=32)
    assert list(results) == ["VIS mIoU", "RVOS mIoU"]
    assert all(0 <= r["value"] <= 1 and 0 < r["chance"] < 1 for r in results.values())


def test_killed_run_resumes_at_the_saved_step_with_the_same_data_and_optimizer(world, tmp_path):
    """From mid-epoch and from an epoch's last batch; with the pixel decoder, whose weights and
    optimizer state must come back too."""
    L.seed_everything(0)
    full = Recorder()
    data, module, trainer = make(world, tmp_path / "full", full, pixel_decoder=True)
    trainer.fit(module, data)
    per_epoch = len(full.steps) // 2
    assert per_epoch > 6

    L.seed_everything(0)
    first = Recorder(kill_at=per_epoch + 2)
    saves = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=n, save_top_k=-1) for n in (5, per_epoch)]
    data, killed, trainer = make(world, tmp_path / "killed", first, *saves, pixel_decoder=True)
    with pytest.raises(Killed):
        trainer.fit(killed, data)

    for step in (5, per_epoch):
        checkpoint = next((tmp_path / "ckpt").glob(f"epoch=0-step={step}.ckpt"))
        saved = torch.load(checkpoint, weights_only=True)
        assert saved["global_step"] == step and saved["optimizer_states"][0]["state"]
        L.seed_everything(123)  # the resumed run must not depend on the global RNG
        second = Recorder()
        data, resumed, trainer = make(world, tmp_path / f"resumed-{step}", second, pixel_decoder=True)
        trainer.fit(resumed, data, ckpt_path=checkpoint)
        assert second.steps == full.steps[step:]  # same step numbers, tasks and pixels from the saved step on
        for key, value in module.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


def test_temporal_none_keeps_the_gates_closed(world, tmp_path):
    data, module, trainer = make(world, tmp_path, temporal="none")
    trainer.fit(module, data)
    vision = module.model.timesformer
    assert vision.temporal_gates().abs().sum() == 0
    assert not any(layer.temporal_attention_gating.requires_grad for layer in vision.encoder.layer)


def test_weight_decay_spares_tables_norms_gates_and_the_probe_only(world):
    module = StreamFormerPretraining(config=TINY, freeze_text_encoder=False)
    module.build(MultiTaskDataModule(root=str(world.root), tasks=("ar",), num_frames=4, image_size=32), warm_up_text=False)
    names = {id(p): name for name, p in module.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group["params"]} for group in module.parameter_groups())
    assert "model.timesformer.embeddings.patch_embeddings.projection.weight" in decay  # a conv kernel
    assert any("lora_A" in name for name in decay)
    spared = {"model.timesformer.embeddings.position_embeddings", "model.timesformer.embeddings.time_embeddings",
              "model.timesformer.head.probe", "model.text_encoder.embeddings.token_embedding.weight",
              "model.text_encoder.embeddings.position_embedding.weight"}  # fmt: skip
    assert spared <= no_decay
    assert all(module.get_parameter(name).ndim <= 1 for name in no_decay - spared)  # biases, norms, gates


def test_a_pretrained_model_takes_the_runs_temporal_rule(world, tmp_path):
    from streamformer import StreamFormerConfig, StreamFormerModel

    data = MultiTaskDataModule(root=str(world.root), tasks=("ar",), num_frames=4, image_size=32)
    text = dict(TINY["text_config"], vocab_size=len(data.tokenizer))
    StreamFormerModel(StreamFormerConfig(**{**TINY, "text_config": text})).save_pretrained(tmp_path / "init")
    for temporal, causal in (("bidirectional", False), ("causal", True)):
        module = StreamFormerPretraining(pretrained=str(tmp_path / "init"), temporal=temporal)
        module.build(data, warm_up_text=False)
        assert module.model.timesformer.config.enable_causal_temporal is causal


class Weights(Callback):
    """All parameters, flattened, before training and after every optimizer step."""

    def on_train_start(self, trainer, module):
        self.after = [torch.cat([p.detach().flatten() for p in module.parameters()])]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == len(self.after):  # an optimizer step just ended
            self.after.append(torch.cat([p.detach().flatten() for p in module.parameters()]))


def _ddp_worker(rank: int, port: int, world, tmp_path, accumulate: int, broken: int, results) -> None:
    """One of two DDP ranks (launched here, as torchrun would); rank 1's first `broken` samples
    (of batches of 4) are broken (what `TaskDataset.get` returns for an unreadable video)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    calls = iter(range(broken if rank == 1 else 0))
    get = MultiTaskDataset.__getitem__
    MultiTaskDataset.__getitem__ = lambda self, key: None if next(calls, None) is not None else get(self, key)
    weights = Weights()
    strategy = DDPStrategy(find_unused_parameters=True, timeout=timedelta(seconds=60))
    data, module, trainer = make(
        world, tmp_path, weights, trainer_args=dict(max_steps=3, devices=2, strategy=strategy, accumulate_grad_batches=accumulate)
    )
    trainer.fit(module, data)
    results[rank] = weights.after


@pytest.mark.parametrize(
    ("accumulate", "broken", "first_step_trains"),
    [(1, 4, False), (2, 4, True), (2, 8, False)],
    ids=["empty-step", "empty-micro-batch", "every-micro-batch-empty"],
)
def test_a_rank_whose_batch_is_all_broken_skips_it_with_every_rank(world, tmp_path, accumulate, broken, first_step_trains):
    """Rank 1 has no loss to return; alone, it would leave rank 0 waiting in the step's gathers
    and gradient all-reduce (and Lightning refuses a step without a loss under DDP). A step moves
    the weights when any of its micro-batches had samples, and not at all otherwise."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, world, tmp_path, accumulate, broken, results), nprocs=2, join=True)
    for rank in (0, 1):
        start, *steps = results[rank]
        assert len(steps) == 3
        assert torch.equal(steps[0], start) != first_step_trains
        assert not torch.equal(steps[1], steps[0])  # the next steps trained
        torch.testing.assert_close(steps[-1], results[0][-1])  # and the replicas stayed equal
