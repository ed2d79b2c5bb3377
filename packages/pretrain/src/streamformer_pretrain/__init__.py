"""Multitask visual-language pretraining of StreamFormer."""

from .data import (
    TASKS,
    ActionRecognitionDataset,
    ClipOptions,
    GroundingDataset,
    LocalizationDataset,
    MultiTaskDataset,
    ReferringDataset,
    RetrievalDataset,
    TaskBalancedBatchSampler,
    VisDataset,
    collate,
    synthetic_task_datasets,
)
from .module import MultiTaskDataModule, StreamFormerPretraining

__all__ = [
    "TASKS",
    "ActionRecognitionDataset",
    "ClipOptions",
    "GroundingDataset",
    "LocalizationDataset",
    "MultiTaskDataModule",
    "MultiTaskDataset",
    "ReferringDataset",
    "RetrievalDataset",
    "StreamFormerPretraining",
    "TaskBalancedBatchSampler",
    "VisDataset",
    "collate",
    "synthetic_task_datasets",
]
