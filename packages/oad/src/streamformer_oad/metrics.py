"""Per-frame metrics of online action detection, as MAT and StreamFormer report them.

- `perframe_average_precision`: THUMOS mAP (metric "AP") and TVSeries mcAP (metric "cAP").
- `perstage_average_precision`: the same scores restricted to deciles of every action instance.

AP is scikit-learn's `average_precision_score` (step-wise, non-interpolated, tied scores form one
threshold), through torchmetrics.

Convention for a class without positive rows (it cannot happen in `perframe_average_precision`,
which skips such classes; it can in `perstage_average_precision`, which has no such filter, when a
class has no positive row at all in the evaluated set): both AP and cAP are 0.0. scikit-learn >= 1.x
and torchmetrics also give AP 0.0 (with a warning); the original cAP formula gives NaN (0 / 0).
Every stage of a class with at least one positive row has positives: each instance keeps >= 1 row
per stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torchmetrics.functional.classification import binary_average_precision

Metric = Literal["AP", "cAP"]
ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_binary(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N,) 0/1 labels and (N,) finite scores as float64 arrays; ValueError otherwise."""
    labels, scores = _to_numpy(labels).astype(np.float64), _to_numpy(scores).astype(np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels and scores must be 1-D of the same length, got {labels.shape} and {scores.shape}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels, scores


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Non-interpolated AP of one class: Σ over score thresholds of (recall step) × precision
    (torchmetrics' `binary_average_precision`, computed in float64).

    labels: (N,) 0/1; scores: (N,). Rows with tied scores form one threshold, as in scikit-learn.
    Returns 0.0 when there is no positive row.
    """
    labels, scores = _check_binary(labels, scores)
    if labels.sum() == 0:
        return 0.0
    return binary_average_precision(torch.from_numpy(scores), torch.from_numpy(labels).long()).item()


def calibrated_average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Calibrated AP (TVSeries): precision re-weighted as if positives and negatives were balanced.

    labels: (N,) 0/1; scores: (N,). Rows sorted by score, descending; w = #neg / #pos;
    cPrec_k = TP_k / (TP_k + FP_k / w); cAP = Σ_{k positive} cPrec_k / #pos. Equals AP when
    #neg == #pos (and scores are distinct). The eps guards are the original's (w + eps, denominator
    + eps). Tied scores are ranked by row order (stable sort; the original's sort leaves them in
    arbitrary order), not grouped as in AP. Returns 0.0 when there is no positive row.
    """
    labels, scores = _check_binary(labels, scores)
    num_positives = labels.sum()
    if num_positives == 0:
        return 0.0
    labels = labels[np.argsort(-scores, kind="stable")]
    true_positives = np.cumsum(labels)
    false_positives = np.cumsum(1.0 - labels)
    eps = np.finfo(np.float64).eps
    negatives_per_positive = (len(labels) - num_positives) / num_positives
    calibrated_precision = true_positives / (true_positives + false_positives / (negatives_per_positive + eps) + eps)
    return float(calibrated_precision[labels == 1].sum() / num_positives)


def _score_function(metric: Metric) -> Callable[[ArrayLike, ArrayLike], float]:
    if metric == "AP":
        return average_precision
    if metric == "cAP":
        return calibrated_average_precision
    raise ValueError(f"unknown metric {metric!r}, expected 'AP' or 'cAP'")


def _prepare(
    ground_truth: ArrayLike, prediction: ArrayLike, class_names: list[str], ignore_index: int, drop_ambiguous: bool
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Checked (N', C) arrays after the THUMOS postprocessing, and the indices of the evaluated classes.

    Postprocessing: drop every row whose ground truth in column `ignore_index` (Ambiguous) is 1, when
    `ignore_index >= 0` and `drop_ambiguous`. Evaluated classes: all but {0 (Background), ignore_index}.
    """
    ground_truth, prediction = _to_numpy(ground_truth), _to_numpy(prediction)
    num_classes = len(class_names)
    if ground_truth.ndim != 2 or ground_truth.shape != prediction.shape or ground_truth.shape[1] != num_classes:
        raise ValueError(
            f"ground_truth and prediction must both be (N, {num_classes}) for {num_classes} class names, "
            f"got {ground_truth.shape} and {prediction.shape}"
        )
    if not np.isin(ground_truth, (0, 1)).all():
        raise ValueError("ground_truth must be 0/1 (one-hot or multi-hot rows)")
    if ignore_index >= num_classes:
        raise ValueError(f"ignore_index {ignore_index} out of range for {num_classes} classes")
    if ignore_index >= 0 and drop_ambiguous:
        keep = ground_truth[:, ignore_index] != 1
        ground_truth, prediction = ground_truth[keep], prediction[keep]
    evaluated = [c for c in range(num_classes) if c not in (0, ignore_index)]
    return ground_truth, prediction, evaluated


def perframe_average_precision(
    ground_truth: ArrayLike,
    prediction: ArrayLike,
    class_names: list[str],
    ignore_index: int,
    metric: Metric = "AP",
    drop_ambiguous: bool = True,
) -> dict:
    """Per-frame (m)AP or (m)cAP over all frames of a split.

    ground_truth: (N, C) 0/1 targets; prediction: (N, C) scores (softmax probabilities); numpy arrays
    or tensors. After the postprocessing of `_prepare`, every evaluated class with at least one
    positive row is scored; classes without positives are skipped (not scored 0).

    Returns {"per_class_AP": {class name: score} (class-index order), "mean_AP": plain mean}; mean_AP
    is NaN when no class has a positive row.
    """
    ground_truth, prediction, evaluated = _prepare(ground_truth, prediction, class_names, ignore_index, drop_ambiguous)
    score = _score_function(metric)
    per_class = {class_names[c]: score(ground_truth[:, c], prediction[:, c]) for c in evaluated if ground_truth[:, c].any()}
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"per_class_AP": per_class, "mean_AP": mean}


def perstage_rows(labels: ArrayLike, stage: int, num_stages: int = 10) -> np.ndarray:
    """Rows scored in one stage of one class: all negative rows + one slice of every positive run.

    labels: (N,) 0/1. For every contiguous positive run [start, end] (end inclusive), with
    `length = end - start`, the stage keeps rows [a, max(a + 1, start + int(length·(stage+1)/S)))
    where a = start + int(length·stage/S). `length = end - start` (not + 1) is the original's quirk,
    kept to reproduce its numbers: the last frame of a run of >= 2 frames is in no stage. The
    fractions are float products truncated by int(), as in the original.

    Returns the sorted (M,) row indices.
    """
    positive = _to_numpy(labels) == 1
    edges = np.diff(np.r_[0, positive.astype(np.int8), 0])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    lengths = ends - starts
    stage_starts = starts + (lengths * (stage / num_stages)).astype(np.int64)
    stage_ends = np.maximum(stage_starts + 1, starts + (lengths * ((stage + 1) / num_stages)).astype(np.int64))
    positive_rows = [np.arange(a, b) for a, b in zip(stage_starts, stage_ends, strict=True)]
    return np.sort(np.concatenate([np.flatnonzero(~positive), *positive_rows]))


def perstage_average_precision(
    ground_truth: ArrayLike,
    prediction: ArrayLike,
    class_names: list[str],
    ignore_index: int,
    metric: Metric = "AP",
    drop_ambiguous: bool = True,
    num_stages: int = 10,
) -> dict:
    """Per-stage (m)AP: each class scored on the rows of `perstage_rows`, for each of `num_stages` stages.

    Same inputs and postprocessing as `perframe_average_precision` (applied first, so positive runs
    separated only by dropped ambiguous rows merge into one run). Every evaluated class is scored,
    including classes without positive rows (score 0.0, see the module docstring).

    Returns {"per_class_AP": {class name: [score per stage]}, "mean_AP": [mean over classes per stage]}.
    """
    ground_truth, prediction, evaluated = _prepare(ground_truth, prediction, class_names, ignore_index, drop_ambiguous)
    score = _score_function(metric)
    per_class = {}
    for c in evaluated:
        stage_rows = [perstage_rows(ground_truth[:, c], stage, num_stages) for stage in range(num_stages)]
        per_class[class_names[c]] = [score(ground_truth[rows, c], prediction[rows, c]) for rows in stage_rows]
    mean = np.mean(list(per_class.values()), axis=0) if per_class else np.full(num_stages, np.nan)
    return {"per_class_AP": per_class, "mean_AP": [float(m) for m in mean]}
