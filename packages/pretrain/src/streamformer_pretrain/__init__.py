"""Multitask visual-language pretraining of StreamFormer."""

from .data import TASKS, MultiTaskDataset, collate, synthetic_task_datasets
from .module import MultiTaskDataModule, StreamFormerPretraining
from .readers import (
    ActionRecognitionDataset,
    ClipOptions,
    GroundingDataset,
    LocalizationDataset,
    ReferringDataset,
    RetrievalDataset,
    VisDataset,
)
from .sampling import TaskBalancedBatchSampler

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
