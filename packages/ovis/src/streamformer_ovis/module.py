"""Lightning training and evaluation of the online VIS model.

Training: B clips of T frames offline through backbone + adapter + head, Mask2Former's set loss per
frame and CTVIS's contrastive ReID loss across frames. Validation / test: every held-out video
streamed frame by frame through the backbone's cache and the tracker, YouTube-VIS result rows
gathered from every process, AP / AR computed against the held-out annotations.

Optimiser as the original: AdamW, lr 1e-4 with 0.1x on everything under the backbone (adapter and
LoRA), weight decay 0.05 but none on norms and embeddings, lr x0.1 at each of `lr_steps`;
gradient clipping (the original's full-model L2 norm 0.01) is the Trainer's `gradient_clip_val`.
Under DDP set the Trainer's `sync_batchnorm: true`: the adapter's BatchNorm layers become
SyncBatchNorm (the original's choice) only there, so CPU runs need no process group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from streamformer import StreamFormerVisionModel

from .adapter import AdapterConfig, StreamFormerAdapter
from .data import CategoryMap
from .head import CTVISHead, head_config
from .losses import CTVISCriterion
from .model import OnlineVISModel, mask_encoder, video_results
from .tracker import TrackerConfig
from .ytvis_eval import evaluate_ytvis


class OnlineVISTraining(L.LightningModule):
    """CTVIS on a StreamFormer ViT-Adapter.

    Args:
        backbone: a StreamFormer checkpoint folder (ours or the original layout).
        categories: the data set's categories, {"ids": [...], "names": [...]} in class order
            (`CategoryMap.as_dict`; the CLI links them from the data module).
        adapter: `AdapterConfig` fields (ViT-Adapter; `temporal_window`: frames the backbone's
            cache keeps when streaming).
        head: `Mask2FormerConfig` fields for the head (defaults: the original recipe).
        reid_dim: width of the ReID embedding.
        reid_weight, aux_reid_weight: weights of the contrastive ReID losses.
        tracker: `TrackerConfig` fields for validation and prediction.
        lr, backbone_lr_multiplier, weight_decay, lr_steps: optimiser and schedule.
        gates_off: zero and freeze the backbone's temporal gates (frames encoded alone; an ablation).
        predictions: write each validation's YouTube-VIS result rows to this JSON file.
        val_chunk: frames per forward when validating: the stream through the cache gives the
            same outputs in any chunks (causal), and chunks amortise per-call overhead.
    """

    def __init__(
        self,
        backbone: str,
        categories: dict[str, list],
        adapter: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        reid_dim: int = 256,
        reid_weight: float = 2.0,
        aux_reid_weight: float = 3.0,
        tracker: dict[str, Any] | None = None,
        lr: float = 1e-4,
        backbone_lr_multiplier: float = 0.1,
        weight_decay: float = 0.05,
        lr_steps: list[int] | None = None,
        gates_off: bool = False,
        predictions: str | None = None,
        val_chunk: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        vision = StreamFormerVisionModel.from_pretrained(backbone).train()  # (loaded in eval mode; Lightning keeps modes)
        if gates_off:
            vision.disable_temporal()
        self.categories = CategoryMap.from_dict(categories)
        config = head_config(len(self.categories), **(head or {}))
        adapter_module = StreamFormerAdapter(vision, AdapterConfig(**(adapter or {})))
        self.model = OnlineVISModel(adapter_module, CTVISHead(config, adapter_module.output_channels, reid_dim))
        self.criterion = CTVISCriterion(config, reid_weight, aux_reid_weight)
        self.tracker_config = TrackerConfig(**(tracker or {}))
        self.results: dict[int, list[dict[str, Any]]] = {}  # video id -> its result rows

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)  # new clips every epoch, the same in every worker

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        output = self.model(batch["frames"])
        losses = self.criterion(output, batch["targets"])
        main = {k: v for k, v in losses.items() if not k[-1].isdigit()}  # the final layer's terms
        self.log_dict({f"train/{k}": v for k, v in main.items()}, prog_bar=False, batch_size=len(batch["targets"]))
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=len(batch["targets"]))
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self.results = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video, frames = batch["video"], batch["frames"]
        encode = mask_encoder(batch["resized"], (video.height, video.width))
        instances, _ = self.model.track(frames, self.tracker_config, self.hparams.val_chunk, encode)
        self.results[video.id] = video_results(instances, video.id, self.categories.ids)

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        per_video = self.results
        if dist.is_available() and dist.is_initialized():  # every process evaluates everything: no rank waits alone
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, per_video)
            # The distributed sampler pads the last ranks with repeated videos: each counts once.
            per_video = {video: rows for part in gathered for video, rows in part.items()}
        results = [row for rows in per_video.values() for row in rows]
        ground_truth = subset_ground_truth(self.trainer.datamodule.val_source.json, set(per_video))
        stats = evaluate_ytvis(ground_truth, results)
        stage = "test" if self.trainer.testing else "val"
        self.log_dict({f"{stage}/{k}": v for k, v in stats.items()}, batch_size=1)
        if self.hparams.predictions and self.trainer.is_global_zero:
            Path(self.hparams.predictions).parent.mkdir(parents=True, exist_ok=True)
            Path(self.hparams.predictions).write_text(json.dumps(results))
        self.last_stats = stats

    on_test_epoch_end = on_validation_epoch_end

    def configure_optimizers(self):
        # No weight decay on norms, biases and embeddings (1-d parameters, nn.Embedding tables and
        # the adapter's level embedding), as the original.
        embeddings = {id(m.weight) for m in self.model.modules() if isinstance(m, nn.Embedding)}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            in_backbone = name.startswith("adapter.")
            no_decay = param.ndim <= 1 or id(param) in embeddings or name.endswith("level_embed")
            groups.setdefault((in_backbone, no_decay), []).append(param)
        h = self.hparams
        optimizer = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "lr": h.lr * (h.backbone_lr_multiplier if in_backbone else 1.0),
                    "weight_decay": 0.0 if no_decay else h.weight_decay,
                }
                for (in_backbone, no_decay), params in groups.items()
            ]
        )
        if not h.lr_steps:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(h.lr_steps), gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def subset_ground_truth(json_path: str, video_ids: set[int]) -> dict[str, Any]:
    """The annotations of the evaluated videos only (a validation may cover a subset)."""
    data = json.loads(Path(json_path).read_text())
    return {
        **data,
        "videos": [v for v in data["videos"] if v["id"] in video_ids],
        "annotations": [a for a in data.get("annotations", []) if a["video_id"] in video_ids],
    }
