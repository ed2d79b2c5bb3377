"""Held-out evaluation of a pretraining checkpoint on the six tasks, with chance levels.

Metrics (on a synthetic world's `val` split, or held-out real data sets given by path;
deterministic middle-of-segment frames; the model runs on its own device):
AR top-1; retrieval R@1 video->text and text->video; localization per-frame mAP; grounding mIoU
(predicted moment: `predicted_moment`); VIS mIoU over the object classes;
RVOS mean mask IoU. Chance: 1/C and 1/N for the ranking metrics, the mean class prevalence for
mAP, and for IoU metrics the score of a seeded random prediction on the same data. Grounding also
gets the score of the best fixed span (`best_fixed_interval`): moments cover a third of a clip,
so one well-placed span, the same for every clip, scores far above a random one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_average_precision
from tqdm import tqdm

from .data import collate, synthetic_task_datasets, task_readers
from .heads import mask_scores
from .module import StreamFormerPretraining
from .readers import ClipOptions, SkipRateExceeded, TaskDataset


def held_out_datasets(
    options: ClipOptions, tasks: tuple[str, ...], root: str | Path | None = None, task_files: dict[str, Any] | None = None
) -> dict[str, TaskDataset]:
    """The evaluation readers: real data sets from `task_files` (per task, reader arguments as in
    the fit config's `data.task_files`; tasks it does not list are not evaluated), else the `val`
    split of the synthetic world at `root`."""
    if task_files is not None:
        unknown = set(task_files) - set(tasks)
        if unknown:
            raise ValueError(f"task_files lists tasks the model has no head for: {sorted(unknown)} (its tasks: {list(tasks)})")
        return {task: task_readers(task, task_files[task], options) for task in tasks if task in task_files}
    if root is None:
        raise ValueError("give root (a synthetic world) or task_files (held-out real data sets)")
    return synthetic_task_datasets(root, "val", options, tasks)


def _batches(dataset, batch_size: int, device: torch.device):
    """Collated batches with the clips on `device` (labels and masks stay on the CPU, where the
    metrics are counted)."""
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"evaluate {dataset.task}", unit="batch", disable=None):
        batch = collate([dataset.get(i, seed=i) for i in range(start, min(len(dataset), start + batch_size))])
        if "error" in batch:
            raise SkipRateExceeded(batch["error"])
        if batch["task"] is not None:
            batch["video"] = batch["video"].to(device, non_blocking=True)
            yield batch


def _interval_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _first_to_last(flags: Tensor) -> tuple[int, int] | None:
    """[start, end) from the first to the last set frame of `flags` [T], None if none is set."""
    on = flags.nonzero()
    return (on.min().item(), on.max().item() + 1) if len(on) else None


def predicted_moment(scores: Tensor) -> tuple[int, int]:
    """[start, end) frame span of a query's moment from its per-frame scores [T]: of the runs of
    consecutive frames above the clip's mean, the one with the largest excess (sum of score - mean),
    less its last frame (a lone frame stays).

    Grounding's premise is that the query happens in the clip, so the threshold is relative to the
    clip; the span of positive logits depends on the logit bias. One run, not the first to the last
    raised frame: a second, weaker bump (in the synthetic world, often the clip's other action) is
    not part of the moment. The last frame is dropped because a causal frame reports what changed
    since the previous sampled frame: the first frame after a moment has still seen its last
    motion, so it scores like the frames inside it. Read this way, an ideal detector of motion
    since the previous sampled frame scores 0.875 mIoU on the world's val split, against 0.758 up
    to and including the last raised frame."""
    excess = (scores - scores.mean()).tolist()
    runs, start = [], None
    for t, value in enumerate([*excess, 0.0]):  # the trailing 0 closes a run at the clip's end
        if value > 0 and start is None:
            start = t
        elif value <= 0 and start is not None:
            runs.append((start, t))
            start = None
    if not runs:  # no frame stands out: the whole clip
        return 0, len(scores)
    start, end = max(runs, key=lambda run: sum(excess[run[0] : run[1]]))
    return start, max(start + 1, end - 1)


def best_fixed_interval(truths: list[tuple[int, int]], clip_length: int) -> tuple[tuple[int, int], float]:
    """The [start, end) span that, predicted for every clip, scores the highest mIoU against
    `truths`, and that mIoU: an upper bound on any grounding prediction that ignores the video."""
    spans = [(a, b) for a in range(clip_length) for b in range(a + 1, clip_length + 1)]
    scores = [sum(_interval_iou(span, truth) for truth in truths) / len(truths) for span in spans]
    best = max(range(len(spans)), key=scores.__getitem__)
    return spans[best], scores[best]


def _mask_iou(pred: Tensor, target: Tensor) -> float:
    union = (pred | target).sum().item()
    return (pred & target).sum().item() / union if union else 1.0


@torch.inference_mode()
def evaluate(
    module: StreamFormerPretraining, datasets: dict[str, TaskDataset], batch_size: int = 16
) -> dict[str, dict[str, float]]:
    """{metric: {"value", "chance"}} of `module` (on its device) on `datasets` (`held_out_datasets`).

    Masks are scored where a pixel's score is positive, which only the sigmoid segmentation loss
    trains: the softmax loss ignores background pixels and gives no score for them, so a
    softmax-trained model's VIS and RVOS are skipped (with a warning), not scored meaninglessly."""
    module.eval()
    if module.hparams.segmentation_loss == "softmax" and {"vis", "rvos"} & set(datasets):
        warnings.warn("softmax-trained masks have no background score: VIS and RVOS mIoU are skipped", stacklevel=2)
        datasets = {task: d for task, d in datasets.items() if task not in ("vis", "rvos")}
    random = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    vision, device = module.model.timesformer, module.device

    if "ar" in datasets:
        classes = module.class_embeddings("ar")
        correct = total = 0
        for batch in _batches(datasets["ar"], batch_size, device):
            scores = F.normalize(vision(batch["video"]).global_output, dim=-1) @ classes.t()
            correct += (scores.argmax(-1).cpu() == batch["label"]).sum().item()
            total += len(batch["label"])
        results["AR top-1"] = {"value": correct / total, "chance": 1 / classes.shape[0]}

    if "retrieval" in datasets:
        videos, texts = [], []
        for batch in _batches(datasets["retrieval"], batch_size, device):
            videos.append(F.normalize(vision(batch["video"]).global_output, dim=-1).float().cpu())
            texts.append(F.normalize(module.embed_texts(batch["caption"]), dim=-1).float().cpu())
        sim = torch.cat(videos) @ torch.cat(texts).t()
        target = torch.arange(len(sim))
        results["retrieval R@1 video->text"] = {"value": (sim.argmax(1) == target).float().mean().item(), "chance": 1 / len(sim)}
        results["retrieval R@1 text->video"] = {"value": (sim.argmax(0) == target).float().mean().item(), "chance": 1 / len(sim)}

    if "localization" in datasets:
        classes, logits = module.class_embeddings("localization"), module.task_logits["localization"]
        scores, labels = [], []
        for batch in _batches(datasets["localization"], batch_size, device):
            scores.append(logits(vision(batch["video"]).pooler_output, classes, "btd,cd->btc").flatten(0, 1).float().cpu())
            labels.append(batch["frame_labels"].flatten())
        scores, labels = torch.cat(scores), torch.cat(labels)
        aps, prevalence = [], []
        for c in range(classes.shape[0]):
            positive = labels == c
            if positive.any():  # classes without positives are skipped
                aps.append(binary_average_precision(scores[:, c].sigmoid(), positive.long()).item())
                prevalence.append(positive.float().mean().item())
        results["localization frame mAP"] = {"value": sum(aps) / len(aps), "chance": sum(prevalence) / len(prevalence)}

    if "grounding" in datasets:
        logits, ious, chance, truths = module.task_logits["grounding"], [], [], []
        for batch in _batches(datasets["grounding"], batch_size, device):
            scores = (
                logits(vision(batch["video"]).pooler_output, module.embed_texts(batch["caption"]), "btd,bd->bt").float().cpu()
            )
            for row, truth in zip(scores, batch["frame_labels"].bool(), strict=True):
                t = len(row)
                truths.append(_first_to_last(truth) or (0, 0))
                ious.append(_interval_iou(predicted_moment(row), truths[-1]))
                a, b = sorted(torch.randint(0, t + 1, (2,), generator=random).tolist())
                chance.append(_interval_iou((a, b), truths[-1]))
        results["grounding mIoU"] = {
            "value": sum(ious) / len(ious),
            "chance": sum(chance) / len(chance),
            "blind": best_fixed_interval(truths, t)[1],
        }

    if "vis" in datasets:
        classes, logits = module.class_embeddings("vis"), module.task_logits["vis"]
        counts = torch.zeros(2, 2, classes.shape[0])  # [model | random guess, intersection | union, class]
        for batch in _batches(datasets["vis"], batch_size, device):
            grid = module.mask_embeddings(vision(batch["video"]).last_hidden_state, batch["video"])
            scores = mask_scores(logits, grid, classes, batch["mask"].shape[-1])[:, :, 1:].float().cpu()
            best, index = scores.max(dim=2)
            pred = torch.where(best > 0, index + 1, torch.zeros_like(index))  # no positive score: background
            guess = torch.randint(0, classes.shape[0], pred.shape, generator=random)
            for k, prediction in enumerate((pred, guess)):
                for c in range(1, classes.shape[0]):
                    truth, predicted = batch["mask"] == c, prediction == c
                    counts[k, 0, c] += (truth & predicted).sum()
                    counts[k, 1, c] += (truth | predicted).sum()
        present = counts[0, 1, 1:] > 0
        iou = counts[:, 0, 1:] / counts[:, 1, 1:].clamp(min=1)
        results["VIS mIoU"] = {"value": iou[0][present].mean().item(), "chance": iou[1][present].mean().item()}

    if "rvos" in datasets:
        logits, ious, chance = module.task_logits["rvos"], [], []
        for batch in _batches(datasets["rvos"], batch_size, device):
            grid = module.mask_embeddings(vision(batch["video"]).last_hidden_state, batch["video"])
            own = module.embed_texts(batch["caption"])[:, None]
            scores = mask_scores(logits, grid, own, batch["mask"].shape[-1])[:, :, 0].float().cpu()
            for pred, truth in zip(scores > 0, batch["mask"].bool(), strict=True):
                ious.append(_mask_iou(pred, truth))
                chance.append(_mask_iou(torch.rand(truth.shape, generator=random) < 0.5, truth))
        results["RVOS mIoU"] = {"value": sum(ious) / len(ious), "chance": sum(chance) / len(chance)}
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | value | chance | value / chance |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['value']:.3f} | {r['chance']:.3f} | {r['value'] / max(r['chance'], 1e-9):.2f}x |")
    if "grounding mIoU" in results:
        lines += ["", blind_grounding_line(results["grounding mIoU"]["blind"])]
    return "\n".join(lines)


def blind_grounding_line(blind: float) -> str:
    return (f"Grounding without the video: the one span that best fits every clip of this split (an upper "
            f"bound on any prediction that ignores the video) scores {blind:.3f} mIoU.")  # fmt: skip


def save_results(results: dict[str, Any], path: str | Path, title: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n{format_table(results)}\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))


def load_checkpoint(checkpoint: str | Path, datamodule) -> StreamFormerPretraining:
    """A pretraining module with the weights of a `streamformer-pretrain fit` checkpoint."""
    import inspect

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    accepted = inspect.signature(StreamFormerPretraining.__init__).parameters
    module = StreamFormerPretraining(**{k: v for k, v in state["hyper_parameters"].items() if k in accepted})
    module.build(datamodule, warm_up_text=False)
    module.load_state_dict(state["state_dict"])
    return module.eval()
