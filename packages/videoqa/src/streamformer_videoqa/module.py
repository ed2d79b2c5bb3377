"""Training the connector and the LM, one LightningModule for every stage.

Stages, as LLaVA-NeXT trains them (the tower is frozen in all of them):

* "projector" (stage 1): only the projector learns, on captions with the `plain` prompt
  (paper recipe: lr 1e-3);
* "full" (stages 2 and 3): projector and the whole LM, on instructions with the chat template
  (lr 2e-5);
* "lora": projector and LoRA adapters on every linear layer of the LM (through peft), the LM's
  own weights frozen.

AdamW (no weight decay in the recipe), learning rate warmed up linearly over `warmup_ratio` of the
steps, then cosine to 0.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from streamformer.schedule import warmup_cosine_factor

from .data import IGNORE, ConversationDataset, MediaOptions, PromptStyle, collate_conversations
from .model import StreamFormerForVideoQA, StreamFormerVideoQAConfig

Stage = Literal["projector", "full", "lora"]
STAGES = ("projector", "full", "lora")


class VideoQATraining(L.LightningModule):
    """One training stage of a `StreamFormerForVideoQA`.

    Args:
        model: a `StreamFormerForVideoQA` folder (`save_pretrained`: from `from_parts` or an
            earlier stage).
        stage: "projector", "full" or "lora" (see the module doc).
        lr, weight_decay, warmup_ratio: AdamW and the warm-up share of a cosine schedule.
        lora_rank, lora_alpha: the adapters of the "lora" stage.
        gradient_checkpointing: recompute the LM's activations in backward (real sizes).
    """

    def __init__(
        self,
        model: str,
        stage: Stage = "projector",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        lora_rank: int = 16,
        lora_alpha: float = 32.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.save_hyperparameters()
        self.model = StreamFormerForVideoQA.from_pretrained(model)
        self.model.language_model.requires_grad_(stage == "full")
        if stage == "lora":
            from peft import LoraConfig, get_peft_model

            adapters = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules="all-linear")
            self.model.language_model = get_peft_model(self.model.language_model, adapters)
        if gradient_checkpointing:
            self.model.language_model.gradient_checkpointing_enable()

    def summed_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(summed cross-entropy of the batch's answer tokens, their count)."""
        logits = self.model(
            batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"], vision_features=batch.get("vision_features")
        ).logits
        labels = batch["labels"][:, 1:]
        summed = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return summed, (labels != IGNORE).sum()

    def answer_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(summed cross-entropy of this rank's answer tokens, answer tokens of every rank).

        Ranks hold different numbers of answer tokens: dividing each rank's sum by the global
        count (and DDP averaging the gradients) gives the gradient of the global batch's mean,
        where a mean per rank would weight a short answer's tokens more than a long one's."""
        summed, count = self.summed_loss(batch)
        return summed, self.trainer.strategy.reduce(count.float(), reduce_op="sum").clamp(min=1)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """The mean answer-token loss of `batch`, as one process sees it."""
        summed, count = self.summed_loss(batch)
        return summed / count

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if batch["skipped"]:
            self.log("data/skipped", float(batch["skipped"]), reduce_fx="sum", on_step=True, batch_size=1)
        # A batch whose every item was skipped: every rank takes a zero loss (same collectives and
        # backward on all ranks), so no rank waits alone in the gradient all-reduce.
        if not self.trainer.strategy.reduce_boolean_decision("input_ids" in batch, all=True):
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        summed, count = self.answer_loss(batch)
        # Summed over ranks, the logged value is the global batch's mean token loss.
        self.log(
            "train/loss", summed.detach() / count, prog_bar=True, on_step=True, reduce_fx="sum", sync_dist=True, batch_size=1
        )
        return summed * self.trainer.world_size / count

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["skipped"]:
            self.log("data/val_skipped", float(batch["skipped"]), reduce_fx="sum", on_epoch=True, batch_size=1)
        if "input_ids" not in batch:  # every item skipped (no gradients here: nothing to keep in step)
            return
        self.log("val/loss", self(batch), on_epoch=True, batch_size=len(batch["input_ids"]), sync_dist=True)

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = math.ceil(self.hparams.warmup_ratio * total)
        schedule = functools.partial(warmup_cosine_factor, warmup=warmup, total=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export(self, folder: str | Path) -> None:
        """The trained model as one folder for `StreamFormerForVideoQA.from_pretrained` (LoRA merged)."""
        language_model = self.model.language_model
        if self.hparams.stage == "lora":  # merged in a copy: the adapters keep training apart
            self.model.language_model = copy.deepcopy(language_model).merge_and_unload()
        try:
            self.model.save_pretrained(folder)
        finally:
            self.model.language_model = language_model


class VideoQADataModule(L.LightningDataModule):
    """Conversation files for one stage.

    Args:
        model: the `StreamFormerVideoQA` folder being trained (the CLI links it to the module's):
            its config gives the frame size, the visual tokens per frame and the placeholder, and
            the folder holds the tokenizer (`streamformer-videoqa build` saves it there).
        train_file, val_file: LLaVA-style JSON lists (`data.read_items`).
        media_root: the folder their `video` / `image` paths are relative to.
        style: "plain" (stage 1) or "chat".
        clip_length: frames sampled uniformly from each video (an image is one frame).
        max_length: longest sequence kept (longer items are skipped and counted, never cut);
            default: the tokenizer's `model_max_length`.
    """

    def __init__(
        self,
        model: str,
        train_file: str,
        media_root: str,
        val_file: str | None = None,
        style: PromptStyle = "chat",
        clip_length: int = 16,
        max_length: int | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import AutoTokenizer

        config = StreamFormerVideoQAConfig.from_pretrained(model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        video_token = self.tokenizer.convert_ids_to_tokens(config.video_token_id)
        options = MediaOptions(clip_length, config.vision_config.image_size, config.tokens_per_frame)
        make = functools.partial(
            ConversationDataset, media_root=media_root, tokenizer=self.tokenizer, video_token=video_token,
            style=style, options=options, max_length=max_length,
        )  # fmt: skip
        self.train_set = make(train_file)
        self.val_set = make(val_file) if val_file else None

    def _loader(self, dataset: ConversationDataset, shuffle: bool) -> DataLoader:
        collate = functools.partial(collate_conversations, pad_token_id=self.tokenizer.pad_token_id)
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers, collate_fn=collate
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []
