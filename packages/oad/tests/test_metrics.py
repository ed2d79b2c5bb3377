"""OAD metrics against hand-computed values and the definitions MAT and StreamFormer report (THUMOS AP, TVSeries cAP)."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_average_precision

from streamformer_oad.metrics import (
    average_precision,
    calibrated_average_precision,
    perframe_average_precision,
    perstage_average_precision,
    perstage_rows,
)

THUMOS_CLASSES = ["Background", *[f"action{i}" for i in range(1, 21)], "Ambiguous"]


def thumos_example() -> tuple[np.ndarray, np.ndarray]:
    """6 frames × 22 columns; class 1 at frames 0, 2; class 2 at 3; frame 4 ambiguous."""
    ground_truth = np.zeros((6, 22))
    ground_truth[[0, 2], 1] = 1
    ground_truth[3, 2] = 1
    ground_truth[4, 21] = 1
    ground_truth[[1, 5], 0] = 1
    prediction = np.full((6, 22), 0.01)
    prediction[:, 1] = [0.9, 0.8, 0.3, 0.1, 0.95, 0.2]
    prediction[:, 2] = [0.1, 0.2, 0.3, 0.6, 0.9, 0.7]
    return ground_truth, prediction


def test_perframe_map_drops_ambiguous_frames():
    ground_truth, prediction = thumos_example()
    result = perframe_average_precision(ground_truth, prediction, THUMOS_CLASSES, ignore_index=21)
    assert list(result["per_class_AP"]) == ["action1", "action2"]  # 3..20 have no positives: skipped, not 0
    assert result["per_class_AP"]["action1"] == pytest.approx(0.8333, abs=1e-4)
    assert result["per_class_AP"]["action2"] == pytest.approx(0.5, abs=1e-4)
    assert result["mean_AP"] == pytest.approx(0.6667, abs=1e-4)


def test_perframe_map_keeping_ambiguous_frames():
    ground_truth, prediction = thumos_example()
    result = perframe_average_precision(ground_truth, prediction, THUMOS_CLASSES, ignore_index=21, drop_ambiguous=False)
    assert result["per_class_AP"]["action1"] == pytest.approx(0.5, abs=1e-4)
    assert result["per_class_AP"]["action2"] == pytest.approx(0.3333, abs=1e-4)
    assert result["mean_AP"] == pytest.approx(0.4167, abs=1e-4)


def test_perframe_map_accepts_tensors():
    ground_truth, prediction = thumos_example()
    result = perframe_average_precision(torch.from_numpy(ground_truth), torch.from_numpy(prediction).float(), THUMOS_CLASSES, 21)
    assert result["mean_AP"] == pytest.approx(0.6667, abs=1e-4)


def test_negative_ignore_index_drops_nothing_and_scores_every_action():
    # TVSeries-style: ignore_index -100, no ambiguous removal, classes 1..C-1
    ground_truth = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    prediction = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.4, 0.5]])
    result = perframe_average_precision(ground_truth, prediction, ["Background", "a", "b"], ignore_index=-100, metric="cAP")
    assert list(result["per_class_AP"]) == ["a", "b"]
    expected = [calibrated_average_precision(ground_truth[:, c], prediction[:, c]) for c in (1, 2)]
    assert result["mean_AP"] == pytest.approx(np.mean(expected))


def test_perframe_map_rejects_bad_shapes_and_metric():
    ground_truth, prediction = thumos_example()
    with pytest.raises(ValueError, match="22 class names"):
        perframe_average_precision(ground_truth[:, :21], prediction[:, :21], THUMOS_CLASSES, 21)
    with pytest.raises(ValueError, match="unknown metric"):
        perframe_average_precision(ground_truth, prediction, THUMOS_CLASSES, 21, metric="mAP")


def test_calibrated_ap_reference_values():
    descending = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 1, 0, 0, 0])
    assert calibrated_average_precision(labels, descending) == pytest.approx(0.9, abs=1e-4)  # w = 2
    assert average_precision(labels, descending) == pytest.approx(0.8333, abs=1e-4)
    balanced = np.array([0, 1, 0, 1])  # #neg == #pos: cAP == AP
    assert calibrated_average_precision(balanced, descending[:4]) == pytest.approx(0.5, abs=1e-4)
    assert average_precision(balanced, descending[:4]) == pytest.approx(0.5, abs=1e-4)
    assert calibrated_average_precision(labels, labels + 0.1 * descending) == pytest.approx(1.0)
    assert average_precision(labels, labels + 0.1 * descending) == pytest.approx(1.0)


def test_calibrated_ap_equals_ap_when_balanced():
    generator = np.random.default_rng(0)
    labels = generator.permutation(np.repeat([0, 1], 50))
    scores = generator.random(100)
    assert calibrated_average_precision(labels, scores) == pytest.approx(average_precision(labels, scores))


def test_ap_matches_torchmetrics_with_ties():
    # torchmetrics' binary AP is scikit-learn's step-wise AP; rounding the scores makes many ties
    generator = np.random.default_rng(1)
    labels = (generator.random(300) < 0.2).astype(int)
    scores = np.round(generator.random(300), 1)
    expected = binary_average_precision(torch.from_numpy(scores), torch.from_numpy(labels)).item()
    assert average_precision(labels, scores) == pytest.approx(expected, abs=1e-6)


def test_ap_without_positives_is_zero():
    assert average_precision(np.zeros(4), np.arange(4.0)) == 0.0
    assert calibrated_average_precision(np.zeros(4), np.arange(4.0)) == 0.0


def test_perstage_rows_reference_instance():
    # One instance on frames 1..11 of 14: decile k scores only frame 1 + k (plus background)
    labels = np.zeros(14, dtype=int)
    labels[1:12] = 1
    background = [0, 12, 13]
    for stage in range(10):
        assert perstage_rows(labels, stage).tolist() == sorted([*background, 1 + stage])
    evaluated = np.concatenate([perstage_rows(labels, stage) for stage in range(10)])
    assert 11 not in evaluated  # last frame of the instance never evaluated


def test_perstage_rows_single_frame_instance_in_every_stage():
    labels = np.array([0, 1, 0])
    for stage in range(10):
        assert perstage_rows(labels, stage).tolist() == [0, 1, 2]


def test_perstage_average_precision_shapes_and_values():
    ground_truth = np.zeros((14, 4))
    ground_truth[1:12, 1] = 1
    ground_truth[[0, 12, 13], 0] = 1
    prediction = np.full((14, 4), 0.1)
    prediction[1:12, 1] = np.linspace(0.9, 0.0, 11)  # frame 1 + k scores 0.9 - 0.09k: below 0.1 from k = 9
    result = perstage_average_precision(ground_truth, prediction, ["Background", "a", "b", "c"], ignore_index=3)
    assert list(result["per_class_AP"]) == ["a", "b"]  # "b" has no positives: kept (no filter), scores 0
    assert result["per_class_AP"]["b"] == [0.0] * 10
    stage_ap_a = result["per_class_AP"]["a"]
    assert stage_ap_a[:9] == pytest.approx([1.0] * 9)
    assert stage_ap_a[9] == pytest.approx(0.25)  # the positive ranks below the 3 background rows
    assert result["mean_AP"] == pytest.approx([(a + 0.0) / 2 for a in stage_ap_a])
