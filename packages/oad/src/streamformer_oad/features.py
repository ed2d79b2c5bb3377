"""OAD feature extraction: one pooled StreamFormer feature per 0.25 s of video, as Lightning predict.

Every video is resampled to `fps` (24) frames per second with the original's rule
(`linspace(0, n - 1, int(n / source_fps * fps)).astype(int)`, frames truncated, not rounded) and
preprocessed with the backbone's SigLIP transform for OAD (short side resized to the model's
image size, bilinear, centre crop, [-1, 1]). Its N resampled frames give L features, one per
chunk of `chunk` (6) frames (4 per second at 24 fps / 6), on the chunk grid of the original
`extract_oad_feature.py` (see `feature_frames`):

    starts = linspace(0, N, N // chunk).astype(int), each clamped to N - chunk
    ends   = starts + chunk - 1          (feature k describes resampled frame ends[k])

Two protocols, both on this grid, so both give the same L for a video and feature k describes the
same instant (frame ends[k], i.e. time ends[k] / fps s):

* "chunks" (the original): frames starts[k] .. ends[k] are an independent `chunk`-frame clip
  (time embeddings 0 .. chunk-1, no state across clips); feature k is the pooled output of the
  clip's last frame.
* "stream" (ours): one causal pass over frames 0 .. ends[-1] through the temporal KV cache (a
  window of `max_frames` frames, 256 by default, with `sink_frames` sinks; None = unbounded), fed
  `frames_per_forward` frames at a time (the result does not depend on it); feature k is the
  pooled output of frame ends[k], which has seen every frame up to ends[k] (within the window)
  and none after.

`grid="uniform"` replaces the linspace starts by 0, chunk, 2 chunk, ... (feature k ends the
0.25 s interval [k/4, (k+1)/4) of target row k exactly); the original's linspace grid spaces the
chunks N / (L - 1) > chunk frames apart, so its feature k drifts from the end of row k's interval
to up to one chunk later (the last two features end within a frame of each other).

Frames are decoded as the backbone consumes them, `frames_per_forward` at a time (`VideoFrames`):
with the window, memory does not grow with the video's length.

`extract_features` runs it with `Trainer.predict` (shards over devices with Lightning's
unrepeated distributed sampler) and writes `<out_dir>/<session>.npy` (float32 [L, D]) atomically.
Sessions whose file exists are skipped (resumable); the folder's `extraction.json` records the
backbone's fingerprint and the protocol, and a run with other settings is refused instead of
mixing features. A video that cannot be decoded is logged by name, skipped and counted, never
replaced by another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from streamformer import StreamFormerVisionModel
from streamformer.cache import DEFAULT_MAX_FRAMES
from streamformer.checkpoints import load_model
from streamformer.video import FrameDecoder, VideoReadError, preprocess, resample_indices

log = logging.getLogger(__name__)

Protocol = Literal["stream", "chunks"]
Grid = Literal["linspace", "uniform"]
PROTOCOLS = ("stream", "chunks")
GRIDS = ("linspace", "uniform")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


# ---------------------------------------------------------------------------------------------
# The time grid


def feature_frames(frame_count: int, chunk: int = 6, grid: Grid = "linspace") -> np.ndarray:
    """Index of the resampled frame each feature describes (the last frame of its chunk), [L].

    L = frame_count // chunk. "linspace" is the original's grid: chunk starts
    `linspace(0, frame_count, L).astype(int)`, a start past the end clamped to the final `chunk`
    frames (only the last one is: the spacing frame_count / (L - 1) exceeds `chunk`), so the last
    feature is always the last frame. "uniform": starts 0, chunk, 2 chunk, ...
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    count = frame_count // chunk
    starts = np.linspace(0, frame_count, count).astype(int) if grid == "linspace" else np.arange(count) * chunk
    return np.minimum(starts, frame_count - chunk).astype(np.int64) + chunk - 1


# ---------------------------------------------------------------------------------------------
# Frames


class VideoFrames:
    """A video's frames resampled to `fps`, decoded as they are asked for: memory holds one
    request's frames however long the video.

    Stream frame i is source frame `index[i]` (resampled with the original's truncating rule,
    `linspace(0, n - 1, int(n / source_fps * fps)).astype(int)`). `take` preprocesses with the
    backbone's "center_crop" mode at `size` (the OAD protocol). Source frames of the previous
    request are kept, since the "chunks" protocol's last two clips overlap. Picklable (the
    decoder is re-opened after a trip through a DataLoader worker).
    """

    def __init__(self, path: str | os.PathLike, size: int, fps: float = 24.0) -> None:
        self.path, self.size = str(path), size
        self.decoder: FrameDecoder | None = FrameDecoder(path)
        self.index = np.asarray(resample_indices(self.decoder.frame_count, self.decoder.fps, fps))
        self._kept: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "decoder": None, "_kept": {}}

    def take(self, frames: Tensor | np.ndarray, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """Pixels [t, 3, S, S] in [-1, 1] of stream frames `frames`."""
        if self.decoder is None:
            self.decoder = FrameDecoder(self.path)
        sources = self.index[np.asarray(frames, dtype=np.int64)].tolist()
        missing = sorted(set(sources) - self._kept.keys())
        decoded = preprocess(self.decoder.read(missing), self.size, "center_crop") if missing else []
        kept = {i: self._kept[i] for i in set(sources) & self._kept.keys()} | dict(zip(missing, decoded, strict=True))
        self._kept = kept
        return torch.stack([kept[i] for i in sources]).to(device=device, dtype=dtype, non_blocking=True)


def _take(frames: Tensor | VideoFrames, positions: np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(frames, VideoFrames):
        return frames.take(positions, device, dtype)
    return frames[torch.as_tensor(positions, dtype=torch.long)].to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Features of one video


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def check_options(protocol: Protocol, chunk: int, max_frames: int | None, sink_frames: int, frames_per_forward: int) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    # A chunk is an independent clip: any window at least as long leaves it as it is.
    if protocol == "chunks" and ((max_frames is not None and max_frames < chunk) or sink_frames):
        raise ValueError(
            f"the chunks protocol runs independent {chunk}-frame clips: max_frames below {chunk} or sink_frames "
            "would change them (they are for the stream protocol)"
        )
    if frames_per_forward < 1:
        raise ValueError(f"frames_per_forward must be >= 1, got {frames_per_forward}")


def video_features(
    model: StreamFormerVisionModel,
    frames: Tensor | VideoFrames,
    protocol: Protocol = "stream",
    chunk: int = 6,
    grid: Grid = "linspace",
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    sink_frames: int = 0,
    frames_per_forward: int = 48,
) -> Tensor:
    """Pooled features [L, D] (float32, CPU) of one video's resampled frames (see the module doc).

    Args:
        model: the backbone (in eval mode; run under torch.inference_mode()).
        frames: [N, 3, S, S] pixels in [-1, 1], or `VideoFrames` (decoded as consumed).
        protocol: "stream" (one causal pass with the KV cache) or "chunks" (independent clips).
        chunk: frames per feature (6 at 24 fps: 4 features per second).
        grid: chunk grid, "linspace" (the original's) or "uniform"; see `feature_frames`.
        max_frames, sink_frames: temporal window of the stream in frames (None: unbounded).
        frames_per_forward: frames per forward call (stream: frames fed to the cache at once;
            chunks: frames_per_forward // chunk clips batched). Does not change the result.
    """
    check_options(protocol, chunk, max_frames, sink_frames, frames_per_forward)
    ends = feature_frames(len(frames), chunk, grid)
    device, dtype = model.device, _model_dtype(model)
    parts: list[Tensor] = []
    if len(ends) and protocol == "stream":
        cache = model.new_cache(batch_size=1, max_frames=max_frames, sink_frames=sink_frames)
        for start in range(0, int(ends[-1]) + 1, frames_per_forward):
            stop = min(start + frames_per_forward, int(ends[-1]) + 1)
            context = model.temporal_context(stop - start, cache)
            hidden = model.embed(_take(frames, np.arange(start, stop), device, dtype)[None], context)
            hidden = model.forward_layers(hidden, context)
            wanted = ends[(ends >= start) & (ends < stop)] - start
            if len(wanted):
                pooled = model.forward_head(model.post_layernorm(hidden[:, torch.as_tensor(wanted)]))
                parts.append(pooled[0].float().cpu())
    elif len(ends):
        clips = max(1, frames_per_forward // chunk)
        offsets = np.arange(chunk) - (chunk - 1)
        for i in range(0, len(ends), clips):
            positions = ends[i : i + clips, None] + offsets  # [clips, chunk]
            pixels = _take(frames, positions.reshape(-1), device, dtype).unflatten(0, positions.shape)
            context = model.temporal_context(chunk)
            hidden = model.forward_layers(model.embed(pixels, context), context)
            parts.append(model.forward_head(model.post_layernorm(hidden[:, -1:]))[:, 0].float().cpu())
    if not parts:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# Lightning: dataset, module, writer


def list_videos(videos: str | os.PathLike | Sequence[tuple[str, str]] | Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """(session, path) pairs from a directory (its video files, session = file stem), a list of
    paths (session = stem) or a list of (session, path) pairs. Sessions must be unique."""
    if isinstance(videos, (str, os.PathLike)):
        folder = Path(videos)
        if not folder.is_dir():
            raise FileNotFoundError(f"video directory not found: {folder}")
        pairs = [(p.stem, str(p)) for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    else:
        pairs = [(str(v[0]), str(v[1])) if isinstance(v, (tuple, list)) else (Path(v).stem, str(v)) for v in videos]
    seen: dict[str, str] = {}
    for session, path in pairs:
        if session in seen:
            raise ValueError(f"session {session!r} appears twice ({seen[session]} and {path}): output files would collide")
        seen[session] = path
    return pairs


class VideoFeatureDataset(Dataset):
    """One item per video: {"session", "path", "frames": VideoFrames | None, "error": str | None}.

    The video is opened here (workers check the next videos ahead); its frames are decoded later,
    as the backbone consumes them. A video that cannot be opened gives an item with its error and
    no frames (never another video's frames).
    """

    def __init__(self, videos: Sequence[tuple[str, str]], size: int, fps: float = 24.0) -> None:
        self.videos = list(videos)
        self.size, self.fps = size, fps

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        session, path = self.videos[i]
        try:
            frames = VideoFrames(path, self.size, self.fps)
        except (VideoReadError, ValueError) as error:  # the video's failure (a ValueError: its frame rate), never the run's
            return {"session": session, "path": path, "frames": None, "error": f"{type(error).__name__}: {error}"}
        return {"session": session, "path": path, "frames": frames, "error": None}


def collate_videos(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Videos have different lengths: a batch is the list of its items."""
    return items


class FeatureExtractor(L.LightningModule):
    """Predict-only module: `predict_step` maps a batch of videos to their [L, D] float32 features.

    Each result is {"session", "path", "features": np.ndarray | None, "error": str | None}.
    Arguments as `video_features`; `temporal=False` zeroes the temporal gates of `model` itself
    (`StreamFormerVisionModel.disable_temporal`, in place: pass a copy to keep the original).
    """

    def __init__(
        self,
        model: StreamFormerVisionModel,
        protocol: Protocol = "stream",
        chunk: int = 6,
        grid: Grid = "linspace",
        max_frames: int | None = DEFAULT_MAX_FRAMES,
        sink_frames: int = 0,
        frames_per_forward: int = 48,
        temporal: bool = True,
    ) -> None:
        super().__init__()
        check_options(protocol, chunk, max_frames, sink_frames, frames_per_forward)
        if protocol == "stream" and model.config.temporal_position == "interpolate":
            raise ValueError("the stream protocol needs temporal_position='clamp' (an 'interpolate' model cannot stream)")
        self.model = model.eval()
        if not temporal:
            self.model.disable_temporal()
        self.options = dict(
            protocol=protocol,
            chunk=chunk,
            grid=grid,
            max_frames=max_frames,
            sink_frames=sink_frames,
            frames_per_forward=frames_per_forward,
        )
        feature_frames(0, chunk, grid)  # validates chunk and grid now rather than at the first video

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # whole videos stay on the host; `video_features` moves one forward's frames at a time

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        results = []
        for item in batch:
            result = {"session": item["session"], "path": item["path"], "features": None, "error": item["error"]}
            if item["error"] is None:
                try:
                    features = video_features(self.model, item["frames"], **self.options)
                    result["features"] = features.numpy().astype(np.float32)
                except VideoReadError as error:  # a file broken past its first frames: the video's failure
                    result["error"] = f"{type(error).__name__}: {error}"
            results.append(result)
        return results


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save to a hidden temporary file beside `path`, then rename it over `path`: readers see
    the old file or the complete new one, never a truncated one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


MANIFEST = "extraction.json"


def backbone_fingerprint(model_path: str | os.PathLike) -> str:
    """sha256 over the backbone's config and weight files (names and contents): a directory's, or one file."""
    digest = hashlib.sha256()
    path = Path(model_path)
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".pt", ".pth"):
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def claim_output_dir(out_dir: Path, settings: dict[str, Any], replace_stale: bool = False) -> None:
    """Resuming into `out_dir` is only safe with the same backbone and protocol: the first run
    records its settings in `extraction.json`, and a later run with other settings is refused
    (rather than silently mixing, or keeping, features of another backbone), or with
    `replace_stale` the old features are deleted first."""
    manifest = out_dir / MANIFEST
    problem = None
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        changed = sorted(k for k in previous.keys() | settings.keys() if previous.get(k) != settings.get(k))
        if not changed:
            return
        problem = f"{out_dir} holds features extracted with other settings ({', '.join(changed)} differ; see {manifest})"
    elif any(out_dir.glob("*.npy")):
        problem = f"{out_dir} holds features but no {MANIFEST}: their backbone is unknown"
    if problem and not replace_stale:
        raise ValueError(f"{problem}: extract into a new folder, delete this one, or pass replace_stale")
    if problem:
        rank_zero_info(f"{problem}: deleting them (replace_stale)")
        for stale in out_dir.glob("*.npy"):
            stale.unlink()
    partial = manifest.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(partial, manifest)


class FeatureWriter(BasePredictionWriter):
    """Writes each video's features to `<out_dir>/<session>.npy` as its batch ends; logs and counts
    the videos that could not be decoded (this rank's `written` and `failed`)."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.written = 0
        self.failed: list[str] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        for result in prediction:
            if result["error"] is not None:
                log.warning("skipping video %s (%s): %s", result["session"], result["path"], result["error"])
                self.failed.append(result["session"])
                continue
            if len(result["features"]) == 0:
                log.warning("video %s (%s) is shorter than one chunk: writing 0 features", result["session"], result["path"])
            save_npy_atomic(self.out_dir / f"{result['session']}.npy", result["features"])
            self.written += 1


# ---------------------------------------------------------------------------------------------
# Entry point


@dataclass
class ExtractionSummary:
    written: int = 0
    skipped_existing: int = 0
    failed: list[str] = field(default_factory=list)  # sessions whose video could not be decoded


def extract_features(
    model_path: str | os.PathLike,
    videos: str | os.PathLike | Sequence[tuple[str, str]] | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    protocol: Protocol = "stream",
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    sink_frames: int = 0,
    fps: float = 24.0,
    chunk: int = 6,
    grid: Grid = "linspace",
    temporal: bool = True,
    frames_per_forward: int = 48,
    batch_size: int = 1,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    precision: str | int = "32-true",
    progress: bool = True,
    replace_stale: bool = False,
) -> ExtractionSummary:
    """Write `<out_dir>/<session>.npy` (float32 [L, D], 4 features per second by default) for every video.

    Args:
        model_path: StreamFormer checkpoint directory (ours, or an original checkpoint directory).
        videos: a directory of video files, a list of paths, or a list of (session, path).
        out_dir: output folder; sessions whose file exists there are skipped (resume); it must not
            hold features of other settings (`extraction.json`).
        replace_stale: delete the folder's features when they came from other settings, instead of
            refusing.
        protocol: "stream" (ours: one causal pass through the KV cache) or "chunks" (the original).
        max_frames, sink_frames: temporal window of the stream, in frames at `fps` (256 by
            default, about 10.7 s at 24 fps; None: unbounded, memory growing with the video).
        fps: resampling rate before chunking.
        chunk: frames per feature.
        grid: "linspace" (the original's chunk grid) or "uniform" (see `feature_frames`).
        temporal: False zeroes every temporal gate (ablation: the backbone without temporal branch).
        frames_per_forward: frames per forward call (speed/memory only).
        batch_size: videos per predict step.
        num_workers: DataLoader workers opening videos ahead (frames are decoded as consumed).
        accelerator, devices, strategy, precision: Lightning Trainer settings (videos are sharded
            over devices).
        progress: show Lightning's progress bar.

    Returns:
        counts of files written, sessions skipped because their file existed, and the sessions
        whose video could not be decoded (no file written; a re-run tries them again).
    """
    pairs = list_videos(videos)
    # Model and options are checked before the folder is claimed for these settings.
    model = load_model(str(model_path))
    module = FeatureExtractor(model, protocol, chunk, grid, max_frames, sink_frames, frames_per_forward, temporal)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(
        backbone=backbone_fingerprint(model_path), protocol=protocol, max_frames=max_frames, sink_frames=sink_frames,
        fps=fps, chunk=chunk, grid=grid, temporal=temporal, precision=str(precision),
    )  # fmt: skip
    claim_output_dir(out, settings, replace_stale)
    todo = [(session, path) for session, path in pairs if not (out / f"{session}.npy").exists()]
    summary = ExtractionSummary(skipped_existing=len(pairs) - len(todo))
    rank_zero_info(
        f"OAD features: {len(pairs)} videos, {summary.skipped_existing} already in {out} (skipped), {len(todo)} to extract"
    )
    if not todo:
        return summary
    loader = DataLoader(
        VideoFeatureDataset(todo, model.config.image_size, fps),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_videos,
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        callbacks=[FeatureWriter(out)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
    )
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    # The files are the truth on every rank (each rank's writer saw only its shard).
    summary.failed = [session for session, _ in todo if not (out / f"{session}.npy").exists()]
    summary.written = len(todo) - len(summary.failed)
    rank_zero_info(
        f"OAD features: wrote {summary.written}, skipped {summary.skipped_existing} existing, "
        f"failed {len(summary.failed)}" + (f" ({', '.join(summary.failed)})" if summary.failed else "")
    )
    return summary
