"""Action recognition from a pretraining checkpoint: zero-shot through the text tower on any AR
CSV, top-1 by frames seen (streaming), and a linear probe on cached features.

- `zero_shot`: the class names of the CSV's own `label2id.json`, each in every prompt template
  (`text.CLASS_TEMPLATES`); per class the mean of the normalised template embeddings, normalised
  again (as `StreamFormerPretraining.class_embeddings`); a clip is scored by the cosine of its
  normalised global feature with each class. Top-1 and top-k (k = min(5, C)), with chance 1/C and
  k/C, and top-1 after each number of frames seen (`zero_shot`'s docstring says why one offline
  pass gives the streaming figures).
- `extract_features` writes one feature row per video to a folder once (resumable, atomic per
  shard) and `linear_probe` fits a logistic-regression head on them; its weight decay is chosen
  on a split of the training features, never on the validation set.
- `plot_curve`: top-1 against frames seen.

Clips are read as `evaluate` reads them: deterministic middle-of-segment frames, resized to a
square, no flips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from .module import MultiTaskDataModule, StreamFormerPretraining
from .readers import ActionRecognitionDataset, ClipOptions, SkipRateExceeded, TaskDataset
from .text import CLASS_TEMPLATES

Feature = Literal["global", "mean"]
FEATURES: tuple[str, ...] = ("global", "mean")
# Weight decays tried by `linear_probe` (on standardised features, against the mean cross-entropy).
WEIGHT_DECAYS: tuple[float, ...] = tuple(10.0**e for e in range(-6, 0))
CACHE_FORMAT = 1


# -- loading ------------------------------------------------------------------------------------


def checkpoint_datamodule(checkpoint: str | Path, root: str | None = None) -> MultiTaskDataModule:
    """The data settings a `streamformer-pretrain fit` checkpoint was trained with (tasks, class
    names, tokenizer), as `streamformer-pretrain evaluate` rebuilds them. `root`: where the world
    of a world-trained model is now (default: where it was)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    accepted = inspect.signature(MultiTaskDataModule.__init__).parameters  # LightningCLI adds `_instantiator`
    saved = dict(state.get("datamodule_hyper_parameters", {}))
    if "num_frames" in saved:  # checkpoints written before the clip length had its own name
        saved.setdefault("clip_length", saved.pop("num_frames"))
    data_args = {k: v for k, v in saved.items() if k in accepted}
    if root is not None and not data_args.get("task_files"):
        data_args["root"] = root
    return MultiTaskDataModule(**data_args)


def load_module(
    checkpoint: str | Path, root: str | None = None, device: str | None = None
) -> tuple[StreamFormerPretraining, MultiTaskDataModule]:
    """The trained module of a checkpoint (in eval mode, on `device`, default CUDA when there is
    one) and its data module. For the "before pretraining" baseline build a fresh one from the
    same settings: `StreamFormerPretraining(**module.hparams).build(datamodule)`."""
    from streamformer.checkpoints import default_device

    from .evaluate import load_checkpoint

    datamodule = checkpoint_datamodule(checkpoint, root)
    module = load_checkpoint(checkpoint, datamodule).to(default_device(device))
    return module, datamodule


def ar_dataset(
    csv: str | Path,
    video_root: str | Path,
    label2id: str | Path,
    clip_length: int,
    image_size: int,
    dataset: str | None = None,
    cache_videos: bool = False,
) -> ActionRecognitionDataset:
    """An AR CSV (`relative_video_path,class_name`, no header) read for evaluation; its classes
    are those of its own `label2id` (ids must be 0 .. C-1)."""
    options = ClipOptions(clip_length, image_size, train=False, cache_videos=cache_videos)
    reader = ActionRecognitionDataset(
        str(csv), str(video_root), str(label2id), dataset=dataset or Path(csv).stem, flips=False, options=options
    )
    ids = sorted(reader.label2id.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{label2id}: class ids must be 0 .. {len(ids) - 1}, found {ids[:10]}...")
    return reader


# -- batches ------------------------------------------------------------------------------------


class _Indexed(torch.utils.data.Dataset):
    """(index, item or None) of `dataset` at `indices` (the clip of sample i is drawn with seed i)."""

    def __init__(self, dataset: TaskDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, dict[str, Any] | None]:
        index = self.indices[j]
        return index, self.dataset.get(index, seed=index)


def _as_list(items):
    return items


def clip_batches(
    dataset: TaskDataset, indices: Sequence[int], batch_size: int, device: torch.device | str, num_workers: int = 0
) -> Iterator[tuple[list[int], Tensor | None, Tensor | None]]:
    """(indices read, clips [B, T, 3, S, S] on `device`, labels [B]) per batch of `indices`.
    Broken samples (logged by the reader) are left out of the batch; a batch with none left is
    (indices, None, None). A data set past its skip rate raises `SkipRateExceeded`."""
    loader = torch.utils.data.DataLoader(
        _Indexed(dataset, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
    )
    for items in loader:
        stop = next((item["error"] for _, item in items if item is not None and "error" in item), None)
        if stop is not None:
            raise SkipRateExceeded(stop)
        kept = [(index, item) for index, item in items if item is not None]
        if not kept:
            yield [], None, None
            continue
        video = torch.stack([item["video"] for _, item in kept]).to(device, non_blocking=True)
        yield [index for index, _ in kept], video, torch.tensor([item["label"] for _, item in kept])


# -- zero-shot ----------------------------------------------------------------------------------


@torch.inference_mode()
def class_text_embeddings(
    module: StreamFormerPretraining, names: Sequence[str], templates: Sequence[str] = CLASS_TEMPLATES, batch_size: int = 256
) -> Tensor:
    """[C, D] embeddings of `names`: per class the mean of its normalised template embeddings,
    normalised again (the rule of `StreamFormerPretraining.class_embeddings`, for any names)."""
    tokenizer = module.tokenizer
    unknown = [name for name in names if tokenizer.unk_token_id in tokenizer(name)["input_ids"]]
    if unknown:
        warnings.warn(
            f"{len(unknown)} of {len(names)} class names have words the tokenizer does not know (e.g. {unknown[0]!r}): "
            "they are read as <unk>",
            stacklevel=2,
        )
    prompts = [template.format(name) for name in names for template in templates]
    embedded = torch.cat([module.embed_texts(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)])
    per_class = F.normalize(embedded.float(), dim=-1).view(len(names), len(templates), -1).mean(1)
    return F.normalize(per_class, dim=-1)


def _accuracy(num_classes: int, top_k: int = 1) -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average="micro")


def streaming_is_exact(vision_model, clip_length: int) -> bool:
    """Whether `pooler_output[:, k - 1]` of an offline pass over `clip_length` frames is what
    streaming the first k frames gives (see `zero_shot`)."""
    config = vision_model.config
    return bool(config.enable_causal_temporal) and (config.temporal_position == "clamp" or clip_length <= config.num_frames)


def zero_shot(
    checkpoint: str | Path | None,
    csv: str | Path,
    video_root: str | Path,
    label2id: str | Path,
    dataset: str | None = None,
    clip_length: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    templates: Sequence[str] = CLASS_TEMPLATES,
    *,
    module: StreamFormerPretraining | None = None,
    image_size: int | None = None,
    root: str | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Zero-shot classification of the videos of an AR CSV by its own classes.

    Give a `checkpoint` (rebuilt as `load_module` does, from the world at `root` if it moved), or
    an already built `module` (checkpoint None), e.g. an initialised-but-untrained one (the
    baseline before pretraining) or one with `module.model.timesformer.disable_temporal()` (gates
    off). `device`: where the model runs (a checkpoint: default CUDA when there is one; a module:
    default where it is, else it is moved). `clip_length` and `image_size` default to the
    checkpoint's training data settings, or for a module to its config's `num_frames` and
    `image_size`. The reader's `dataset` name defaults to the CSV's stem.

    Returns: "top1", "top5" (top-k with k = "top5_k" = min(5, C)), their chance levels
    "chance_top1" = 1/C and "chance_top5" = k/C, "curve" (top-1 after k = 1 .. T frames),
    "num_classes", "num_videos" (scored), "skipped" (broken samples, logged by the reader),
    "clip_length", "streaming_exact".

    The curve comes from one offline pass per clip: point k scores `pooler_output[:, k - 1]`,
    frame k's pooled feature. That is the global feature a stream would report after its first k
    frames: the temporal attention is causal (frame t attends to frames <= t only), the spatial
    attention, MLP and pooling head work within a frame, and frame t's time embedding is the same
    row whether the clip has k or T frames (for T <= the config's `num_frames`, or
    `temporal_position="clamp"`), so nothing of frames after k reaches frame k. Its last point is
    the global feature's top-1. ("streaming_exact" is False, with a warning, for a bidirectional
    model or interpolated time embeddings over more frames than the table has.) The k frames are
    the first k of the T sampled over the whole video, not k frames sampled anew.
    """
    if (checkpoint is None) == (module is None):
        raise ValueError("give either checkpoint or module")
    if module is None:
        module, datamodule = load_module(checkpoint, root, device)
        clip_length = clip_length or datamodule.hparams.clip_length
        image_size = image_size or datamodule.hparams.image_size
    else:
        if device is not None:
            module = module.to(device)
        clip_length = clip_length or module.model.config.num_frames
        image_size = image_size or module.model.config.image_size
    module.eval()
    reader = ar_dataset(csv, video_root, label2id, clip_length, image_size, dataset)
    names = reader.vocabularies[reader.dataset]
    if len(names) < 2:
        raise ValueError(f"{label2id}: zero-shot needs at least two classes, found {len(names)}")
    with torch.inference_mode():
        results = _score_zero_shot(module, reader, class_text_embeddings(module, names, templates), batch_size, num_workers)
    if not results["streaming_exact"]:
        warnings.warn(
            "the frames-seen curve is not what streaming gives: the temporal attention is bidirectional, or the time "
            f"embeddings are interpolated over {clip_length} > num_frames={module.model.config.num_frames} frames",
            stacklevel=2,
        )
    return results


def _score_zero_shot(
    module: StreamFormerPretraining, reader: ActionRecognitionDataset, classes: Tensor, batch_size: int, num_workers: int
) -> dict[str, Any]:
    vision, names, clip_length = module.model.timesformer, reader.vocabularies[reader.dataset], reader.options.clip_length
    classes = classes.to(module.device)
    k = min(5, len(names))
    top1, top5 = _accuracy(len(names)), _accuracy(len(names), k)
    curve = [_accuracy(len(names)) for _ in range(clip_length)]
    scored = 0
    batches = clip_batches(reader, range(len(reader)), batch_size, module.device, num_workers)
    for indices, video, labels in tqdm(batches, desc="zero-shot", unit="batch", disable=None):
        if video is None:
            continue
        scores = (F.normalize(vision(video).pooler_output.float(), dim=-1) @ classes.t()).cpu()  # [B, T, C]
        top1.update(scores[:, -1], labels)
        top5.update(scores[:, -1], labels)
        for frames, metric in enumerate(curve):
            metric.update(scores[:, frames], labels)
        scored += len(indices)
    if not scored:
        raise ValueError(f"{reader.source}: no video could be read")
    return {
        "top1": top1.compute().item(),
        "top5": top5.compute().item(),
        "top5_k": k,
        "chance_top1": 1 / len(names),
        "chance_top5": k / len(names),
        "curve": [metric.compute().item() for metric in curve],
        "num_classes": len(names),
        "num_videos": scored,
        "skipped": len(reader) - scored,
        "clip_length": clip_length,
        "streaming_exact": streaming_is_exact(vision, clip_length),
    }


def zero_shot_table(results: dict[str, Any]) -> str:
    """The Markdown table of `zero_shot`'s results and its frames-seen line."""
    from .evaluate import format_table

    table = format_table({
        "top-1": {"value": results["top1"], "chance": results["chance_top1"]},
        f"top-{results['top5_k']}": {"value": results["top5"], "chance": results["chance_top5"]},
    })  # fmt: skip
    curve = "  ".join(f"{k}: {value:.3f}" for k, value in enumerate(results["curve"], start=1))
    return f"{table}\n\ntop-1 by frames seen: {curve}"


# -- features and the linear probe --------------------------------------------------------------


class Features(NamedTuple):
    """Cached features of the readable samples, in sample order: rows [N, D], labels [N], and the
    sample indices that were broken (no row)."""

    features: Tensor
    labels: Tensor
    skipped: list[int]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-1 of a model's weights and buffers (and its config, if it has one): a feature cache
    written by another model, or the same with its gates off, is refused."""
    digest = hashlib.sha1()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cache_identity(vision_model: nn.Module, dataset: TaskDataset) -> dict[str, Any]:
    options = dataclasses.asdict(dataset.options)
    options.pop("cache_videos", None)
    options.pop("max_skip_rate", None)
    return {
        "format": CACHE_FORMAT,
        "num_samples": len(dataset),
        "samples": hashlib.sha1(repr(list(dataset.samples)).encode()).hexdigest(),
        "label2id": hashlib.sha1(json.dumps(getattr(dataset, "label2id", None), sort_keys=True).encode()).hexdigest(),
        "options": options,
        "model": model_fingerprint(vision_model),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


@torch.inference_mode()
def extract_features(
    vision_model: nn.Module,
    dataset: TaskDataset,
    out_dir: str | Path,
    feature: Feature = "global",
    batch_size: int = 16,
    device: str | None = None,
    shard_size: int = 256,
    num_workers: int = 0,
) -> Features:
    """One feature row per video of `dataset` (an AR reader, `ar_dataset`), computed once and
    cached in `out_dir`.

    Rows: "global" = the last frame's pooled feature (`global_output`), "mean" = the mean of the
    per-frame pooled features; both are written from the same pass, so either is read back
    without running the model again. Samples are grouped in shards of `shard_size` consecutive
    indices, one safetensors file each (`streamformer.tensor_file.SafetensorsWriter`: written
    under a temporary name and renamed once complete), so a shard file that exists is done and
    the set of shard files is the done-index: a rerun computes only the missing shards (an
    interrupted run loses at most the shard in progress). `meta.json` records what the cache
    holds (the samples and their label ids, the clip options and a fingerprint of the model's
    weights and config); a cache of other samples or another model raises ValueError. Broken
    samples get no row (their indices are in `Features.skipped`).

    `device`: where the model runs (default: where it is; else it is moved there, in place).
    """
    from safetensors.torch import load_file

    from streamformer.tensor_file import SafetensorsWriter

    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    if device is not None:
        vision_model = vision_model.to(device)
    device = next(vision_model.parameters()).device
    vision_model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = _cache_identity(vision_model, dataset)
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        differs = sorted(key for key, value in identity.items() if meta.get(key) != json.loads(json.dumps(value)))
        if differs:
            raise ValueError(f"{out_dir} caches features of other {differs}: use another folder (or empty this one)")
        shard_size = meta["shard_size"]  # the cache's own shards, whatever this call asks
    else:
        _write_json(meta_path, {**identity, "shard_size": shard_size, "source": getattr(dataset, "source", "")})

    def shard_path(shard: int) -> Path:
        return out_dir / f"shard-{shard:06d}.safetensors"

    num_shards = math.ceil(len(dataset) / shard_size)
    todo = [shard for shard in range(num_shards) if not shard_path(shard).exists()]
    for shard in tqdm(todo, desc=f"features -> {out_dir}", unit="shard", disable=None):
        rows = range(shard * shard_size, min(len(dataset), (shard + 1) * shard_size))
        found: dict[int, tuple[Tensor, Tensor, int]] = {}
        for indices, video, labels in clip_batches(dataset, rows, batch_size, device, num_workers):
            if video is None:
                continue
            pooled = vision_model(video).pooler_output.float().cpu()
            for index, frames, label in zip(indices, pooled, labels.tolist(), strict=True):
                found[index] = (frames[-1], frames.mean(0), label)
        dim = next(iter(found.values()))[0].shape[0] if found else 0
        empty = torch.zeros(dim)
        columns = {
            "global": torch.stack([found[i][0] if i in found else empty for i in rows]),
            "mean": torch.stack([found[i][1] if i in found else empty for i in rows]),
            "labels": torch.tensor([found[i][2] if i in found else -1 for i in rows], dtype=torch.float32),
            "valid": torch.tensor([i in found for i in rows], dtype=torch.float32),
        }
        metadata = {"first": str(rows.start), "end": str(rows.stop)}
        with SafetensorsWriter(shard_path(shard), {k: tuple(v.shape) for k, v in columns.items()}, metadata) as writer:
            for name, values in columns.items():
                writer.append(name, values)

    parts = [load_file(shard_path(shard)) for shard in range(num_shards)]
    valid = [part["valid"].bool() for part in parts]
    kept = [(part[feature][ok], part["labels"][ok].long()) for part, ok in zip(parts, valid, strict=True) if ok.any()]
    if not kept:
        raise ValueError(f"{getattr(dataset, 'source', dataset)}: no video could be read")
    skipped = (~torch.cat(valid)).nonzero().flatten().tolist()
    return Features(torch.cat([f for f, _ in kept]), torch.cat([y for _, y in kept]), skipped)


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, epochs: int, lr: float) -> tuple[Tensor, Tensor]:
    """Weights [C, D] and bias [C] minimising mean cross-entropy + weight_decay / 2 * |W|^2 (the
    bias is not decayed), full batch, L-BFGS with a strong-Wolfe line search from zeros. The
    problem is convex, so the result does not depend on a random start."""
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _standardiser(rows: Tensor):
    """x -> (x - mean) / std per dimension, with the statistics of `rows`."""
    mean, std = rows.mean(0), rows.std(0, correction=0).clamp(min=1e-6)
    return lambda x: (x - mean) / std


def _fit_and_score(
    x_fit: Tensor, y_fit: Tensor, x_eval: Tensor, num_classes: int, decay: float, epochs: int, lr: float
) -> Tensor:
    """Logits [N_eval, C] of a head fitted on `x_fit` (standardised by its own statistics)."""
    standardise = _standardiser(x_fit)
    weight, bias = _fit_logistic(standardise(x_fit), y_fit, num_classes, decay, epochs, lr)
    with torch.no_grad():
        return standardise(x_eval) @ weight.t() + bias


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    seed: int = 0,
    epochs: int = 1000,
    lr: float = 1.0,
    weight_decay: float | Sequence[float] = WEIGHT_DECAYS,
    num_classes: int | None = None,
    holdout: float = 0.2,
    device: str | None = None,
) -> dict[str, Any]:
    """Top-1 and top-k (k = min(5, C)) on the validation features of a logistic-regression head
    trained on the training features.

    Features are L2-normalised, then standardised per dimension with the mean and standard
    deviation of the rows the head is fitted on (never of the rows it is scored on): normalised
    features of a small backbone differ in small directions, and unstandardised they need weights
    thousands long, which L-BFGS reaches only after thousands of iterations. The head
    (`_fit_logistic`) minimises the mean cross-entropy + weight_decay / 2 * |W|^2, full batch,
    with L-BFGS for at most `epochs` iterations (step `lr`); it stops earlier once converged.

    The weight decay, when several are given, is chosen on the training set alone: a random
    `holdout` fraction of the training features (drawn with `seed`) scores a head fitted on the
    rest for each value; the best holdout top-1 wins (ties: the lower holdout cross-entropy, then
    the larger decay), and the head is refitted on the whole training set with it. The validation
    set is only scored, never used to choose. Everything is deterministic for a seed (the fit is
    convex from a zero start, so the seed acts through the holdout split only).

    Returns "top1", "top5", "top5_k", "weight_decay" (the one used) and "selection" ({decay:
    holdout top-1}, empty for a single decay)."""
    device = torch.device(device or "cpu")
    decays = [float(weight_decay)] if isinstance(weight_decay, int | float) else [float(d) for d in weight_decay]
    selection: dict[str, float] = {}
    with torch.inference_mode(False), torch.enable_grad():  # (the inputs may be inference tensors)
        x_train = F.normalize(train_features.detach().to(device, torch.float32), dim=-1).clone()
        x_val = F.normalize(val_features.detach().to(device, torch.float32), dim=-1).clone()
        y_train, y_val = train_labels.detach().to(device).long().clone(), val_labels.detach().to(device).long().clone()
        num_classes = num_classes or int(max(y_train.max(), y_val.max())) + 1
        chosen = decays[0]
        if len(decays) > 1:
            order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed)).to(device)
            held = max(1, round(holdout * len(x_train)))
            if held >= len(x_train):
                raise ValueError(f"{len(x_train)} training samples are too few to hold {holdout:.0%} out")
            fit, out = order[held:], order[:held]
            ranked = []
            for decay in decays:
                logits = _fit_and_score(x_train[fit], y_train[fit], x_train[out], num_classes, decay, epochs, lr)
                top1 = (logits.argmax(-1) == y_train[out]).float().mean().item()
                selection[f"{decay:g}"] = top1
                ranked.append((top1, -F.cross_entropy(logits, y_train[out]).item(), decay))
            chosen = max(ranked)[2]
        logits = _fit_and_score(x_train, y_train, x_val, num_classes, chosen, epochs, lr).cpu()
    k = min(5, num_classes)
    y_val = y_val.cpu()
    return {
        "top1": _accuracy(num_classes)(logits, y_val).item(),
        "top5": _accuracy(num_classes, k)(logits, y_val).item(),
        "top5_k": k,
        "weight_decay": chosen,
        "selection": selection,
    }


# -- plot ---------------------------------------------------------------------------------------


def plot_curve(curves: dict[str, list[float]], chance: float, path: str | Path, title: str = "") -> Path:
    """Top-1 against frames seen (1 .. T), one line per curve (e.g. trained, gates off, before
    pretraining), with the chance level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, "o-", label=name)
    ax.axhline(chance, color="gray", linestyle="--", label=f"chance ({chance:.3f})")
    ax.set_xlabel("frames seen")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def initial_module(module: StreamFormerPretraining, datamodule: MultiTaskDataModule, seed: int = 0) -> StreamFormerPretraining:
    """`module` as it was before pretraining: the same settings, initialised afresh from `seed`
    (so a "before pretraining" row reproduces), in eval mode."""
    torch.manual_seed(seed)
    untrained = StreamFormerPretraining(**dict(module.hparams))
    untrained.build(datamodule, warm_up_text=False)
    return untrained.eval()


def streaming_curves(checkpoint: str | Path, root: str | Path, output: str | Path, device: str | None = None) -> dict:
    """Zero-shot top-1 by frames seen on the world's held-out AR split for the trained model, the
    same with its temporal gates at 0, and the model as initialised before pretraining; the table
    to `output` (Markdown) and the plot beside it (`.png`)."""
    root = Path(root)
    module, datamodule = load_module(checkpoint, str(root), device)
    untrained = initial_module(module, datamodule).to(module.device)
    args = (None, root / "ar" / "val.csv", root, root / "ar" / "label2id.json")
    results = {"trained": zero_shot(*args, module=module)}
    results["before pretraining"] = zero_shot(*args, module=untrained.eval())
    module.model.timesformer.disable_temporal()
    results["trained, gates off"] = zero_shot(*args, module=module)
    output = Path(output)
    frames = len(results["trained"]["curve"])
    lines = [
        "# Zero-shot action recognition by frames seen",
        "",
        f"`streamformer-pretrain ar-curves` on `make demo`'s model: top-1 on the world's {results['trained']['num_videos']} "
        "held-out AR clips after k frames (the causal backbone's pooled feature of frame k: what a stream gives "
        f"after k frames), chance {results['trained']['chance_top1']:.3f}. One run; the clips are trimmed to their action.",
        "",
        "| model | " + " | ".join(str(k) for k in range(1, frames + 1)) + " |",
        "|---|" + "---|" * frames,
    ]
    for name, result in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in result["curve"]) + " |")
    trained, off = results["trained"]["curve"], results["trained, gates off"]["curve"]
    lines += [
        "",
        f"The trained model's top-1 rises from {trained[0]:.3f} after one frame to {max(trained):.3f}; with the gates "
        f"at 0 it stays between {min(off):.3f} and {max(off):.3f}: the actions are motions, visible only over frames, "
        "and the temporal branch is what reads them as they arrive.",
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    plot_curve({k: v["curve"] for k, v in results.items()}, results["trained"]["chance_top1"], output.with_suffix(".png"))
    print("\n".join(lines))
    return results
