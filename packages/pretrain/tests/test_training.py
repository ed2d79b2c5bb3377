"""Training through Lightning: one run end to end, a killed run that resumes exactly, and DDP
ranks that stay in step when one rank's batch is all broken or its loss non-finite."""

import math
import os
import socket
import warnings
from datetime import timedelta

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from streamformer.synthetic import DATASET
from streamformer_pretrain import MultiTaskDataModule, StreamFormerPretraining
from streamformer_pretrain.data import MultiTaskDataset
from streamformer_pretrain.readers import ClipOptions, SkipRateExceeded

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
    data = MultiTaskDataModule(
        root=str(world.root), tasks=("ar", "grounding", "rvos"), clip_length=4, image_size=32, batch_size=4
    )
    module = StreamFormerPretraining(config=TINY, text_warmup_steps=5, lr=1e-3, **model_args)
    trainer = L.Trainer(
        **{"max_epochs": 2, "accelerator": "cpu", "devices": 1, **(trainer_args or {})},
        use_distributed_sampler=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=list(callbacks),
    )  # fmt: skip
    return data, module, trainer


def test_fit_trains_every_task_and_exports(world, tmp_path):
    from streamformer import StreamFormerVisionModel
    from streamformer_pretrain.cli import evaluate as evaluate_command
    from streamformer_pretrain.cli import export
    from streamformer_pretrain.evaluate import best_fixed_interval, evaluate, format_table, held_out_datasets

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
    held_out = held_out_datasets(ClipOptions(4, 32, train=False), data.tasks, root=world.root)
    with pytest.warns(UserWarning, match="softmax-trained masks"):
        results = evaluate(module, held_out)
    assert list(results) == ["AR top-1", "grounding mIoU"]  # no mask metric without a background score
    # AR: chance is one over the classes, and top-1 counts whole clips.
    ar = held_out["ar"]
    assert results["AR top-1"]["chance"] == 1 / len(ar.vocabularies[DATASET])
    assert (results["AR top-1"]["value"] * len(ar)) == pytest.approx(round(results["AR top-1"]["value"] * len(ar)))
    # Grounding's blind bound is the best single span against the clips' own moments.
    moments = []
    for i in range(len(held_out["grounding"])):
        on = held_out["grounding"].get(i, seed=i)["frame_labels"].nonzero().flatten()
        moments.append((int(on.min()), int(on.max()) + 1))
    blind = results["grounding mIoU"]["blind"]
    assert blind == pytest.approx(best_fixed_interval(moments, 4)[1])
    assert f"scores {blind:.3f} mIoU" in format_table(results)
    # The command on the checkpoint, as LightningCLI writes it (with its `_instantiator` entry).
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    checkpoint["datamodule_hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    torch.save(checkpoint, tmp_path / "cli.ckpt")
    with pytest.warns(UserWarning, match="softmax-trained masks"):
        assert evaluate_command(str(tmp_path / "cli.ckpt"), root=str(world.root), device="cpu") == results


def test_evaluate_reads_held_out_data_by_path_as_it_reads_the_world(world):
    """Real data sets are given by reader arguments (`task_files`); pointed at the world's val
    files they must give the same figures as the world's own layout."""
    from streamformer_pretrain.evaluate import evaluate, held_out_datasets

    data = MultiTaskDataModule(root=str(world.root), tasks=("vis", "rvos"), clip_length=4, image_size=32, batch_size=4)
    module = StreamFormerPretraining(config=TINY, segmentation_loss="sigmoid")
    module.build(data, warm_up_text=False)
    options = ClipOptions(4, 32, train=False)
    root = world.root
    task_files = {
        "vis": {"json_path": str(root / f"vis/val_{DATASET}.json"), "frame_root": str(root / "vis"),
                "label2id": str(root / "vis/label2id.json"), "dataset": DATASET},
        "rvos": {"csv_path": str(root / "rvos/val_MEVIS.csv"), "video_root": str(root / "videos"),
                 "mask_root": str(root / "rvos/masks")},
    }  # fmt: skip
    by_world = evaluate(module, held_out_datasets(options, data.tasks, root=root))
    by_path = evaluate(module, held_out_datasets(options, data.tasks, task_files=task_files))
    assert list(by_world) == ["VIS mIoU", "RVOS mIoU"] and by_path == by_world
    only_rvos = evaluate(module, held_out_datasets(options, data.tasks, task_files={"rvos": task_files["rvos"]}))
    # (the chance levels share one seeded generator across tasks, so only the value is the same)
    assert list(only_rvos) == ["RVOS mIoU"] and only_rvos["RVOS mIoU"]["value"] == by_world["RVOS mIoU"]["value"]
    with pytest.raises(ValueError, match="no head for: \\['ar'\\]"):
        held_out_datasets(options, data.tasks, task_files={"ar": {}})


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
    module.build(MultiTaskDataModule(root=str(world.root), tasks=("ar",), clip_length=4, image_size=32), warm_up_text=False)
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

    data = MultiTaskDataModule(root=str(world.root), tasks=("ar",), clip_length=4, image_size=32)
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


class Toy(StreamFormerPretraining):
    """The module's step logic (skips, AdamW, the schedule) around a linear model instead of a
    StreamFormer: a batch is {"video": x [N, 4], "target": y [N]}, its loss the squared error."""

    def __init__(self, **kwargs) -> None:
        super().__init__(lr=0.1, min_lr=0.1, **kwargs)  # min_lr = lr: a constant learning rate
        self.net = torch.nn.Linear(4, 1)
        with torch.no_grad():  # the same start in every process
            self.net.weight.copy_(torch.linspace(-1, 1, 4))
            self.net.bias.zero_()
        self.after = []  # the weights after each batch

    def configure_model(self) -> None:
        pass  # no StreamFormer to build

    def total_steps(self) -> int:
        return 100  # no DataModule to count from; the schedule is constant anyway

    def task_loss(self, batch, seed=0):
        out = self.net(batch["video"])[:, 0]
        if batch.get("inf_grad"):  # what an fp16 overflow in backward looks like to the scaler
            out.register_hook(lambda grad: torch.full_like(grad, math.inf))
        return (out - batch["target"]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.after.append(torch.cat([p.detach().flatten() for p in self.net.parameters()]))


def toy_batches(seed: int, count: int, nan_at=()) -> list[dict]:
    """`count` batches of 4 samples; those in `nan_at` have NaN targets, and so a NaN loss."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(count):
        video, target = torch.randn(4, 4, generator=g), torch.randn(4, generator=g)
        batches.append({"task": "ar", "skipped": 0, "video": video, "target": target * math.nan if i in nan_at else target})
    return batches


def fit_toy(module: Toy, batches: list[dict], **trainer_args) -> L.Trainer:
    trainer = L.Trainer(
        **{"max_epochs": 1, "accelerator": "cpu", "devices": 1, **trainer_args},
        use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


NAN_AT = {0: (3,), 1: (1,)}  # per rank, the batches whose loss is NaN: never two in a row


def _nonfinite_worker(rank: int, port: int, results) -> None:
    """One of two DDP ranks (launched as in `_ddp_worker`): five batches with a NaN loss on one
    rank at batches 1 and 3; then a run with two in a row on rank 1, one more than
    `max_nonfinite_steps` allows."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))

    def fit_ddp(module: Toy, batches: list[dict]) -> L.Trainer:
        return fit_toy(module, batches, devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=60)))

    module = Toy(max_nonfinite_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit_ddp(module, toy_batches(rank, 5, NAN_AT[rank]))
    warned = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    try:
        fit_ddp(Toy(max_nonfinite_steps=1), toy_batches(rank, 4, nan_at=(1, 2) if rank == 1 else ()))
        stopped = None
    except FloatingPointError as error:
        stopped = str(error)
    # A data set past its skip rate on rank 0 (its reader's error travels in the batch).
    batches = toy_batches(rank, 4)
    if rank == 0:
        batches[2] = {"skipped": 0, "task": None, "error": "Synthetic: 11 of the 200 samples tried were broken"}
    toy = Toy()
    try:
        fit_ddp(toy, batches)
        broken = None
    except SkipRateExceeded as error:
        broken = (str(error), len(toy.after))
    results[rank] = (module.after, warned, "train/nonfinite_steps" in trainer.callback_metrics, stopped, broken)


def test_a_nonfinite_loss_on_one_rank_is_skipped_by_every_rank():
    """Raising on that rank alone would leave the other waiting in the gradient all-reduce until
    the timeout. Both ranks skip the batch, the optimizer does not step (the run equals one without
    those batches), and too many in a row stop every rank, not one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_nonfinite_worker, args=(port, results), nprocs=2, join=True)

    # Without the skipped batches, in one process: DDP averages the ranks' gradients, which is
    # the gradient of the squared error on both ranks' batches together.
    rank0, rank1 = toy_batches(0, 5), toy_batches(1, 5)
    together = [
        {**rank0[i], **{key: torch.cat([rank0[i][key], rank1[i][key]]) for key in ("video", "target")}} for i in (0, 2, 4)
    ]
    reference = Toy()
    fit_toy(reference, together)
    for rank in (0, 1):
        after, warned, counted, stopped, broken = results[rank]
        assert torch.equal(after[1], after[0]) and torch.equal(after[3], after[2])  # skipped by every rank
        assert not torch.equal(after[2], after[1]) and not torch.equal(after[4], after[3])
        torch.testing.assert_close(after[-1], reference.after[-1])
        step = NAN_AT[rank][0]
        assert warned == [f"non-finite ar loss at step {step} on rank {rank}: every rank skips this batch"]
        assert counted
        assert stopped is not None and "2 batches in a row (max_nonfinite_steps=1)" in stopped
        message, trained = broken  # both ranks stop at batch 2, having trained on batches 0 and 1
        assert trained == 2 and ("11 of the 200" in message if rank == 0 else "on another rank" in message)


def test_an_fp16_gradient_overflow_is_left_to_the_grad_scaler():
    """A finite loss whose gradients overflowed is no skipped batch: the scaler finds the inf,
    skips the optimizer step and halves its scale."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = toy_batches(0, 3)
    batches[1]["inf_grad"] = True
    module = Toy()
    trainer = fit_toy(module, batches, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert torch.equal(module.after[1], module.after[0]) and not torch.equal(module.after[2], module.after[1])
    assert scaler.get_scale() == 512.0
    assert "train/nonfinite_steps" not in trainer.callback_metrics
