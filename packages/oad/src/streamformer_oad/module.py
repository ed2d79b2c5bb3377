"""The OAD training job: a DataModule over THUMOS-layout features and the MAT LightningModule.

Evaluation has two modes (the DataModule's `evaluation`):
- "windows": the original's train-time test, which the
  StreamFormer paper reports: non-overlapping windows of work + anticipation rows, every row scored,
  the anticipated rows included.
- "online": one score per frame from the past only (`windows.online_indices`), equal to what
  `OnlineDetector` emits step by step on a live stream.
Both take the softmax over all logits of the last work representation, like the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from .data import DataInfo, OnlineFrameDataset, Session, WindowDataset, load_sessions
from .metrics import perframe_average_precision
from .model import MAT, MATConfig, MATOutput, mat_loss, warmup_cosine
from .online import last_observed_scores
from .windows import WindowLengths

Evaluation = Literal["windows", "online"]


class OADDataModule(L.LightningDataModule):
    """Features and per-frame targets in the THUMOS / TVSeries layout.

    Args:
        root: the data set directory holding `<visual_feature>/`, `<target_dir>/` (and `<motion_feature>/`).
        dataset: the entry of `data_info` to use ("THUMOS", "TVSeries", "Synthetic").
        data_info: the data_info.json (default: `<root>/data_info.json`).
        visual_feature, motion_feature: feature directory names; no motion feature = visual only.
        long_memory_num_samples, long_memory_rate, work_length, anticipation_length, future_length:
            memory and target lengths in feature frames; the CLI links the ones the model
            shares from `model.config`.
        evaluation: "windows" (the paper's train-time test) or "online" (per frame, past only).
        batch_size, num_workers: DataLoader settings.
        seed: the train windows' random offsets (a new offset every epoch: seed + epoch).
    Training uses data_info's train sessions, evaluation its test sessions; set
    `trainer.reload_dataloaders_every_n_epochs: 1` so the offsets change every epoch.
    """

    def __init__(
        self,
        root: str = "runs/world/oad",
        dataset: str = "Synthetic",
        data_info: str | None = None,
        visual_feature: str = "streamformer_stream",
        motion_feature: str | None = None,
        target_dir: str = "target_perframe",
        long_memory_num_samples: int = 256,
        long_memory_rate: int = 4,
        work_length: int = 32,
        anticipation_length: int = 8,
        future_length: int = 48,
        evaluation: Evaluation = "windows",
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.info = DataInfo.load(data_info or self.root / "data_info.json", dataset)

    @property
    def lengths(self) -> WindowLengths:
        h = self.hparams
        return WindowLengths(h.work_length, h.anticipation_length, h.future_length, h.long_memory_num_samples, h.long_memory_rate)

    def _load(self, phase: Literal["train", "test"]) -> list[Session]:
        h = self.hparams
        return load_sessions(
            self.root, self.info.sessions(phase), h.visual_feature, h.target_dir, h.motion_feature, self.info.num_classes
        )

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = WindowDataset(self._load("train"), self.lengths, phase="train", seed=self.hparams.seed)
        sessions = self._load("test")
        if self.hparams.evaluation == "windows":
            self.eval_set = WindowDataset(sessions, self.lengths, phase="test")
        else:
            self.eval_set = OnlineFrameDataset(sessions, self.lengths)

    def with_evaluation(self, evaluation: Evaluation) -> OADDataModule:
        """The same data with another evaluation mode."""
        arguments = {k: v for k, v in self.hparams.items() if not k.startswith("_")}  # LightningCLI adds `_instantiator`
        return OADDataModule(**{**arguments, "evaluation": evaluation})

    def train_dataloader(self) -> DataLoader:
        # A new random window offset every epoch, as the original reshuffles its windows.
        self.train_set.reshuffle(self.hparams.seed + (self.trainer.current_epoch if self.trainer else 0))
        return DataLoader(self.train_set, self.hparams.batch_size, shuffle=True, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_set, self.hparams.batch_size, num_workers=self.hparams.num_workers)

    test_dataloader = val_dataloader


class OnlineActionDetection(L.LightningModule):
    """MAT on frozen features, trained with MCE and evaluated by per-frame mAP.

    Args:
        config: the MAT head.
        lr, weight_decay: Adam with L2 weight decay, as the original.
        warmup_epochs, warmup_factor: the original's `warmup_cosine` (warm-up multiplied into the
            cosine, stepped per iteration over the whole run).
    EMA weights come from Lightning's `EMAWeightAveraging` callback (configs/oad/*.yaml): evaluation
    runs with them and checkpoints store them, as the original does.
    """

    def __init__(
        self,
        config: MATConfig,
        lr: float = 7e-5,
        weight_decay: float = 5e-5,
        warmup_epochs: int = 10,
        warmup_factor: float = 0.3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        self.model = MAT(config)
        self._eval_scores: list[Tensor] = []
        self._eval_targets: list[Tensor] = []
        self.info: DataInfo | None = None  # from the data, at setup

    def setup(self, stage: str) -> None:
        """Take the class list from the data, and check that it and the features fit the config."""
        data = self.trainer.datamodule
        self.info = data.info
        sessions = (data.train_set if stage == "fit" else data.eval_set).sessions
        config, first = self.config, sessions[0]
        problems = []
        if self.info.num_classes != config.num_classes:
            problems.append(f"the data has {self.info.num_classes} classes, the MAT config {config.num_classes}")
        if first.visual.shape[1] != config.visual_size:
            problems.append(
                f"visual features have {first.visual.shape[1]} channels, the config's visual_size is {config.visual_size}"
            )
        motion = None if first.motion is None else first.motion.shape[1]
        if motion != config.motion_size:
            problems.append(f"motion features: the data has {motion} channels, the config's motion_size is {config.motion_size}")
        if problems:
            raise ValueError(f"{first.name} and the MAT config disagree: " + "; ".join(problems))

    def forward(self, batch: dict[str, Any], grouping: str = "batch") -> MATOutput:
        return self.model(batch["visual"], batch.get("motion"), batch["memory_mask"], grouping=grouping)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = mat_loss(self(batch), batch["target"], batch["future"], self.info.ignore_index)
        size = len(batch["visual"])
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, prog_bar=name == "loss", batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["target"].ndim == 2:
            # Per-frame samples: scored exactly as `OnlineDetector` scores a live stream.
            scores = last_observed_scores(self(batch, grouping="sample"), self.config.work_memory_length)
        else:
            scores = self(batch).work_scores[-1].softmax(dim=-1).flatten(0, 1)
        self._eval_scores.append(scores.float().cpu())
        self._eval_targets.append(batch["target"].reshape(scores.shape).float().cpu())

    test_step = validation_step

    def _finish_evaluation(self, stage: str) -> None:
        if not self._eval_scores:
            return
        info = self.info
        scores, targets = torch.cat(self._eval_scores), torch.cat(self._eval_targets)
        self._eval_scores, self._eval_targets = [], []
        if self.trainer.world_size > 1:
            rank_zero_warn(
                "per-frame mAP is computed on each rank's frames and averaged over ranks, which is not the "
                "mAP over all frames: evaluate on one device for the exact metric"
            )
        result = perframe_average_precision(targets, scores, info.class_names, info.ignore_index, metric=info.metrics)
        self.log(f"{stage}/mAP", result["mean_AP"], prog_bar=True, sync_dist=True)
        self.log(f"{stage}/chance", chance_average_precision(targets, info), sync_dist=True)
        self.last_evaluation = result

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def configure_optimizers(self):
        h = self.hparams
        # The original's Adam adds weight decay to the gradient (L2), not AdamW's decoupled decay.
        optimizer = torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = h.warmup_epochs * per_epoch

        def schedule(step: int) -> float:
            return warmup_cosine(step, warmup, total, h.warmup_factor)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def chance_average_precision(targets: Tensor, info: DataInfo) -> float:
    """The mAP of scores that ignore the video: AP of a random ranking is the class's positive
    rate (for calibrated AP it is 0.5), averaged over the classes the metric evaluates."""
    if info.metrics == "cAP":
        return 0.5
    if info.ignore_index >= 0:
        targets = targets[targets[:, info.ignore_index] != 1]
    rates = [targets[:, c].mean().item() for c in range(1, targets.shape[1]) if c != info.ignore_index and targets[:, c].any()]
    return sum(rates) / max(1, len(rates))


# ---------------------------------------------------------------------------------------------
# The LightningCLI of the job (`streamformer-oad fit/test`, and the demo's runs)

# The memory and target lengths live once, in the model config; the data module reads them.
LINKED_LENGTHS = {
    "long_memory_num_samples": "long_memory_num_samples",
    "work_memory_length": "work_length",
    "anticipation_length": "anticipation_length",
    "future_length": "future_length",
}


class OADCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for source, target in LINKED_LENGTHS.items():
            parser.link_arguments(f"model.config.{source}", f"data.{target}")


def lightning_cli(args: list[str] | None = None, run: bool = True) -> OADCLI:
    """The job's LightningCLI on `args` (None: the command line); `run=False` only builds it."""
    return OADCLI(OnlineActionDetection, OADDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})
