"""The multitask pretraining LightningModule and its DataModule."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from streamformer import StreamFormerConfig, StreamFormerModel
from streamformer.schedule import warmup_cosine_factor

from .data import TASKS, MultiTaskDataset, collate, synthetic_task_datasets, task_readers
from .heads import (
    DenseProjection,
    PixelDecoder,
    SegmentationLoss,
    TaskLogits,
    classification_loss,
    gather_across_ranks,
    grounding_loss,
    limit_classes,
    localization_loss,
    patch_grid,
    retrieval_loss,
    rvos_loss,
    vis_loss,
)
from .readers import ClipOptions, SkipRateExceeded
from .sampling import ResumableDataLoader, TaskBalancedBatchSampler, derive_seed, small_task_repeats
from .text import CLASS_TEMPLATES, SEGMENTATION_TEMPLATES, warm_up_text_tower, word_tokenizer

TemporalMode = Literal["causal", "bidirectional", "none"]


class MultiTaskDataModule(L.LightningDataModule):
    """The pretraining tasks, one task per batch.

    Args:
        root: a world written by `streamformer.synthetic.generate_world` (its layout is known).
        tasks: the tasks the model has heads for.
        train_tasks: the tasks batches are drawn from (default: all of `tasks`), for task ablations.
        task_files: for real data sets instead of `root`: per task, the arguments of its reader in
            `streamformer_pretrain.readers` (e.g. `ar: {csv_path, prefix, label2id}`), or a list of
            them to read several data sets as one task; `reader: <class name>` picks another
            reader of the task (e.g. `CocoPseudoVisDataset`).
        tokenizer: a tokenizer directory (SigLIP's for real data); default: a word-level tokenizer
            built from the data's texts.
        clip_length, image_size: clip shape fed to the model.
        batch_size: per device.
        augment: the original's training transforms: RandAugment and a
            random-resized crop for AR, short-side resize and a random crop for the others, drawn
            around the masks for VIS and RVOS. Off (the synthetic world): frames resized to a square.
        hflip: paired horizontal flips at train time in the tasks the original flips (AR,
            retrieval, VIS); an AR data set whose classes name directions (SSv2) opts out with its
            reader's `flips: false`.
        cache_videos: decode each video once and keep it in memory (small data sets such as the
            synthetic world; it halves a tiny model's step time there).
        replicate_small_tasks: the original's `balance_sample_num`: a task with fewer than half
            the largest task's samples recurs largest // size times per epoch
            (`sampling.small_task_repeats`).
        max_skip_rate: stop when more than this fraction of the samples a data set's reader tried
            were broken (missing or undecodable files, unusable annotations), checked once it has
            tried `readers.SKIP_RATE_MIN_TRIED`; below it, broken samples are skipped and counted.
    """

    def __init__(
        self,
        root: str | None = "runs/world",
        tasks: tuple[str, ...] = TASKS,
        train_tasks: tuple[str, ...] | None = None,
        task_files: dict[str, dict[str, Any] | list[dict[str, Any]]] | None = None,
        tokenizer: str | None = None,
        clip_length: int = 8,
        image_size: int = 32,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        hflip: bool = False,
        cache_videos: bool = False,
        replicate_small_tasks: bool = False,
        max_skip_rate: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tasks = tuple(tasks)
        self.root = Path(root) if root else None
        options = ClipOptions(
            clip_length,
            image_size,
            train=True,
            augment=augment,
            hflip=hflip,
            cache_videos=cache_videos,
            max_skip_rate=max_skip_rate,
        )
        if task_files:
            self.train_sets = {task: task_readers(task, task_files[task], options) for task in self.tasks}
        elif self.root is not None:
            self.train_sets = synthetic_task_datasets(self.root, "train", options, self.tasks)
        else:
            raise ValueError("give either root (a synthetic world) or task_files (real data sets)")
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        else:
            self.tokenizer = word_tokenizer(self.texts())

    def texts(self) -> list[str]:
        """Every class name, caption and expression of the training data."""
        texts = [name for task in ("ar", "localization", "vis") for names in self.vocabularies(task).values() for name in names]
        for dataset in self.train_sets.values():
            for sample in dataset.samples:
                if isinstance(sample, dict) and "text" in sample:
                    texts.append(sample["text"])
        return texts

    def vocabularies(self, task: str) -> dict[str, list[str]]:
        """{data set: class names in id order} for the tasks that classify (empty for the others)."""
        return dict(getattr(self.train_sets.get(task), "vocabularies", {}))

    def batch_sampler(self, rank: int = 0, world_size: int = 1) -> TaskBalancedBatchSampler:
        trained = self.hparams.train_tasks or self.tasks
        sizes = {task: len(d) for task, d in self.train_sets.items() if task in trained}
        repeats = small_task_repeats(sizes) if self.hparams.replicate_small_tasks else None
        return TaskBalancedBatchSampler(sizes, self.hparams.batch_size, self.hparams.seed, rank, world_size, repeats)

    def batches_per_epoch(self, world_size: int = 1) -> int:
        return len(self.batch_sampler(0, world_size))

    def train_dataloader(self) -> ResumableDataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = self.batch_sampler(rank, world)
        return ResumableDataLoader(
            MultiTaskDataset(self.train_sets), batch_sampler=sampler, collate_fn=collate, num_workers=self.hparams.num_workers
        )


class StreamFormerPretraining(L.LightningModule):
    """Multitask visual-language alignment of a StreamFormer with the six task losses.

    Args:
        pretrained: a `StreamFormerModel` directory (e.g. `streamformer convert <siglip> <out>`);
            None builds a fresh model from `config` (the tiny synthetic recipe).
        config: `StreamFormerConfig` fields for a fresh model; `text_config.vocab_size` is set
            from the tokenizer.
        segmentation_loss: "sigmoid" (paper) or "softmax" (original code) for VIS and RVOS.
        pixel_decoder: score VIS and RVOS masks at half the frame's resolution through
            `heads.PixelDecoder` instead of on the patch grid (the original); for patch grids
            coarse against the objects (see packages/pretrain/README.md).
        freeze_text_encoder: keep the text tower fixed (class embeddings are then cached).
        text_warmup_steps: for a fresh model, contrastive warm-up steps of the text tower on the
            data's texts before training (`text.warm_up_text_tower`); 0 for a SigLIP text tower.
        temporal: "causal" (StreamFormer), "bidirectional" or "none" (gates fixed at 0), for ablations.
        lr, weight_decay, betas, warmup_ratio, min_lr: AdamW and a per-step cosine schedule.
        max_nonfinite_steps: a batch whose loss is non-finite on any rank is skipped by every rank
            (counted in `train/nonfinite_steps`, with a warning from the rank that had it); one
            more than this many in a row stops the run with FloatingPointError on every rank.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        segmentation_loss: SegmentationLoss = "sigmoid",
        pixel_decoder: bool = False,
        freeze_text_encoder: bool = True,
        text_warmup_steps: int = 0,
        temporal: TemporalMode = "causal",
        lr: float = 7e-5,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.0,
        min_lr: float = 0.0,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: StreamFormerModel | None = None
        self.task_logits = nn.ModuleDict()
        self.dense: DenseProjection | None = None
        self.pixel_decoder: PixelDecoder | None = None
        self.class_texts: dict[str, dict[str, list[list[str]]]] = {}  # task -> data set -> class -> prompts
        self._step_has_data = False  # whether a batch of the coming optimizer step had samples and a loss
        self._nonfinite_in_a_row = 0  # batches skipped for a non-finite loss since the last finite one

    # -- model ----------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is None:
            self.build(self.trainer.datamodule)

    def build(self, datamodule: MultiTaskDataModule, warm_up_text: bool = True) -> None:
        """Create the model, the task heads and the class prompts for the data's tasks.

        `warm_up_text=False` skips the text warm-up (when weights will be loaded right after)."""
        tokenizer = datamodule.tokenizer
        if self.hparams.pretrained:
            model = StreamFormerModel.from_pretrained(self.hparams.pretrained)
        else:
            fields = dict(self.hparams.config or {})
            text = dict(fields.pop("text_config", {}))
            text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=None, max_position_embeddings=tokenizer.model_max_length)  # fmt: skip
            model = StreamFormerModel(StreamFormerConfig(**fields, text_config=text))
        # The run's attention rule, whatever a loaded config says (read at every forward).
        model.config.enable_causal_temporal = self.hparams.temporal != "bidirectional"
        self.model = model
        self.tokenizer = tokenizer
        self._set_trainable()
        for task in datamodule.tasks:
            self.task_logits[task] = TaskLogits(model.logit_scale.item(), model.logit_bias.item())
        if {"vis", "rvos"} & set(datamodule.tasks):
            self.dense = DenseProjection(model.timesformer.head)
            if self.hparams.pixel_decoder:
                self.pixel_decoder = PixelDecoder(model.config.hidden_size)
        self.class_texts = {
            task: {
                dataset: [[t.format(name) for t in templates] for name in names]
                for dataset, names in datamodule.vocabularies(task).items()
            }
            for task, templates in (("ar", CLASS_TEMPLATES), ("localization", CLASS_TEMPLATES), ("vis", SEGMENTATION_TEMPLATES))
            if task in datamodule.tasks
        }
        if warm_up_text and not self.hparams.pretrained and self.hparams.text_warmup_steps:
            groups = [templates for task in self.class_texts.values() for names in task.values() for templates in names]
            groups += [[text, f"a video of {text}", f"{text}."] for text in sorted(set(datamodule.texts()))]
            text_model = model.text_encoder
            text_model.requires_grad_(True)
            losses = warm_up_text_tower(text_model, tokenizer, groups, self.hparams.text_warmup_steps)
            text_model.requires_grad_(not self.hparams.freeze_text_encoder)
            rank_zero_info(f"text warm-up: {len(groups)} text groups, InfoNCE {losses[0]:.3f} -> {losses[-1]:.3f}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["streamformer_config"] = self.model.config.to_dict()  # for `streamformer-pretrain export`

    def _set_trainable(self) -> None:
        """LoRA trains instead of the spatial qkv/output weights; the text tower as configured;
        with temporal="none" the gates stay at 0."""
        vision = self.model.timesformer
        vision.requires_grad_(True)
        for layer in vision.encoder.layer:
            for linear in (layer.attention.attention.qkv, layer.attention.output.dense):
                if hasattr(linear, "base_layer"):
                    linear.base_layer.requires_grad_(False)
        if self.hparams.temporal == "none":
            vision.disable_temporal()
        self.model.text_encoder.requires_grad_(not self.hparams.freeze_text_encoder)
        self.model.logit_scale.requires_grad_(False)  # each task has its own pair
        self.model.logit_bias.requires_grad_(False)

    # -- text -----------------------------------------------------------------------------------

    def embed_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").to(self.device)
        return self.model.get_text_features(tokens["input_ids"])

    def class_embeddings(self, task: str, dataset: str | None = None) -> Tensor:
        """[C, D] for the classes of `dataset` (may be omitted when the task has one data set): per
        class, the mean of its normalised template embeddings, normalised again. Cached while the
        text tower is frozen."""
        vocabularies = self.class_texts[task]
        if dataset is None:
            if len(vocabularies) != 1:
                raise ValueError(f"{task} has the classes of several data sets ({sorted(vocabularies)}); name one")
            dataset = next(iter(vocabularies))
        cache_name = f"_classes_{task}_{dataset}"
        if self.hparams.freeze_text_encoder and hasattr(self, cache_name):
            return getattr(self, cache_name)
        with torch.set_grad_enabled(not self.hparams.freeze_text_encoder and self.training):
            per_class = [F.normalize(self.embed_texts(templates), dim=-1).mean(0) for templates in vocabularies[dataset]]
            embeddings = F.normalize(torch.stack(per_class), dim=-1)
        if self.hparams.freeze_text_encoder:
            setattr(self, cache_name, embeddings.detach())
        return embeddings

    def mask_embeddings(self, last_hidden_state: Tensor, video: Tensor) -> Tensor:
        """[B, T, h, w, D] embeddings the mask tasks score against text: the patch grid, or half
        the frame's resolution with the pixel decoder."""
        grid = patch_grid(self.dense(last_hidden_state))
        return grid if self.pixel_decoder is None else self.pixel_decoder(grid, video)

    # -- steps ----------------------------------------------------------------------------------

    def task_loss(self, batch: dict[str, Any], seed: int = 0) -> Tensor:
        """The batch's task loss. `seed` drives the loss's own random draws (VIS negative classes):
        training derives it from (epoch, batch index), so a resumed run draws the same."""
        task, logits = batch["task"], self.task_logits[batch["task"]]
        out = self.model.timesformer(batch["video"])
        if task == "ar":
            return self.per_dataset(
                batch, lambda rows, classes: classification_loss(logits, out.global_output[rows], classes, batch["label"][rows])
            )
        if task == "retrieval":
            text, offset = gather_across_ranks(self.embed_texts(batch["caption"]), with_grad=True)
            return retrieval_loss(logits, out.global_output, text, offset)
        if task == "grounding":
            return grounding_loss(logits, out.pooler_output, self.embed_texts(batch["caption"]), batch["frame_labels"])
        if task == "localization":
            return self.per_dataset(
                batch,
                lambda rows, classes: localization_loss(logits, out.pooler_output[rows], classes, batch["frame_labels"][rows]),
            )
        grid = self.mask_embeddings(out.last_hidden_state, batch["video"])
        if task == "vis":
            generator = torch.Generator().manual_seed(seed)
            return self.per_dataset(
                batch,
                lambda rows, classes: vis_loss(
                    logits,
                    grid[rows],
                    *limit_classes(classes, batch["mask"][rows], generator=generator),
                    self.hparams.segmentation_loss,
                ),
            )
        captions, offset = gather_across_ranks(self.embed_texts(batch["caption"]), with_grad=False)
        return rvos_loss(logits, grid, captions, batch["mask"], self.hparams.segmentation_loss, offset)

    def per_dataset(self, batch: dict[str, Any], loss: Callable[[Any, Tensor], Tensor]) -> Tensor:
        """The batch mean of a per-sample-mean `loss(rows, classes)`, each sample scored against the
        classes of its own data set (a task may mix data sets, e.g. ActivityNet, HACS and FineAction)."""
        task, datasets = batch["task"], batch["dataset"]
        if len(set(datasets)) == 1:
            return loss(slice(None), self.class_embeddings(task, datasets[0]))
        total = 0.0
        for dataset in dict.fromkeys(datasets):
            rows = torch.tensor([i for i, name in enumerate(datasets) if name == dataset], device=batch["video"].device)
            total = total + loss(rows, self.class_embeddings(task, dataset)) * len(rows)
        return total / len(datasets)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # A data set past its skip rate stops every rank at this step, not only the one that read it.
        if not self.trainer.strategy.reduce_boolean_decision("error" not in batch, all=True):
            raise SkipRateExceeded(batch.get("error", "a data set passed its max_skip_rate on another rank (see its log)"))
        if batch["skipped"]:
            self.log("data/skipped", float(batch["skipped"]), reduce_fx="sum", on_step=True)
        # A batch whose every sample was broken (each named in the log) contributes nothing. Every
        # DDP rank must still run the same collectives and backward, so when any rank has no
        # samples all ranks take a zero loss, and `on_before_optimizer_step` drops the gradients.
        if not self.trainer.strategy.reduce_boolean_decision(batch["task"] is not None, all=True):
            self.log("data/empty_batches", 1.0, reduce_fx="sum", on_step=True, batch_size=1)
            return self._zero_loss()
        loss = self.task_loss(batch, seed=derive_seed(self.current_epoch, batch_idx))
        # The same for a non-finite loss on any rank: a rank that raised alone would leave the
        # others waiting in the gradient all-reduce until the process group's timeout.
        finite = bool(torch.isfinite(loss))
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            return self._skip_nonfinite(batch["task"], finite)
        self._nonfinite_in_a_row = 0
        self.log(f"train/{batch['task']}", loss, on_step=True, batch_size=len(batch["video"]))
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=len(batch["video"]))
        self._step_has_data = True
        return loss

    def _zero_loss(self) -> Tensor:
        """Zero times every trainable parameter: its backward reaches them all, so DDP's gradient
        all-reduce runs as in any step."""
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def _skip_nonfinite(self, task: str, finite_here: bool) -> Tensor:
        """The zero loss for a batch whose loss was non-finite on some rank (every rank calls
        this at the same batch, so the count and the limit agree across ranks)."""
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_steps", 1.0, reduce_fx="sum", on_step=True, batch_size=1)
        if self._nonfinite_in_a_row > self.hparams.max_nonfinite_steps:
            raise FloatingPointError(
                f"non-finite loss in {self._nonfinite_in_a_row} batches in a row (max_nonfinite_steps="
                f"{self.hparams.max_nonfinite_steps}), the last at step {self.global_step} ({task} on this rank)"
            )
        if not finite_here:
            warnings.warn(
                f"non-finite {task} loss at step {self.global_step} on rank {self.global_rank}: every rank skips this batch",
                RuntimeWarning,
                stacklevel=2,
            )
        return self._zero_loss()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """No gradient at all when every batch of this step was empty or skipped: AdamW then
        leaves the weights and its moments alone, where a zero gradient would still move them.
        A finite loss whose fp16 gradients overflowed keeps them: the GradScaler has already
        found the inf (it unscales before this hook), skips the step and lowers its scale."""
        if not self._step_has_data:
            optimizer.zero_grad(set_to_none=True)
        self._step_has_data = False

    def total_steps(self) -> int:
        """Optimizer steps of the whole run, from the sampler's length. (Not
        `trainer.estimated_stepping_batches`: it builds the dataloader before a checkpoint is
        restored, and the loader's mid-epoch position would then never be loaded.)"""
        trainer = self.trainer
        per_epoch = math.ceil(trainer.datamodule.batches_per_epoch(trainer.world_size) / trainer.accumulate_grad_batches)
        limits = [per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf]
        limits.append(trainer.max_steps if trainer.max_steps > 0 else math.inf)
        if min(limits) == math.inf:
            raise ValueError("set trainer.max_epochs or trainer.max_steps: the cosine schedule needs the run's length")
        return max(1, int(min(limits)))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups of the trainable parameters: weight decay on weight matrices and kernels;
        none on biases, norms, 0-d gates/scales, embedding tables and the probe."""
        tables = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            table = id(param) in tables or name.endswith(("position_embeddings", "time_embeddings", "probe"))
            (no_decay if param.ndim <= 1 or table else decay).append(param)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.lr, betas=self.hparams.betas)
        total = self.total_steps()
        warmup = int(self.hparams.warmup_ratio * total)
        schedule = functools.partial(
            warmup_cosine_factor, warmup=warmup, total=total, floor=self.hparams.min_lr / self.hparams.lr
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
