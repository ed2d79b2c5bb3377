"""Reading videos for StreamFormer: decord decoding, frame sampling, SigLIP preprocessing.

Frames come out as float tensors [T, 3, S, S] in [-1, 1] (SigLIP's (x / 255 - 0.5) / 0.5),
ready to be batched into the model's [B, T, 3, S, S]. Every decoding failure raises
`VideoReadError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RESIZE_MODES = ("resize", "center_crop")


class VideoReadError(RuntimeError):
    """A video file could not be opened or decoded."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    frame_count: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def open_video(path: str | os.PathLike):
    """A decord `VideoReader` for `path`; raises `VideoReadError` for missing, empty or broken files."""
    import decord  # imported lazily: decoding is optional for users who feed tensors

    path = str(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"video file is empty (0 bytes): {path}")
    try:
        reader = decord.VideoReader(path, num_threads=1)
    except Exception as error:  # decord raises its own DECORDError (and RuntimeError) on bad input
        raise VideoReadError(f"cannot open video {path}: {str(error).splitlines()[0]}") from error
    if len(reader) == 0:
        raise VideoReadError(f"video has no frames: {path}")
    # Read once here: asking the reader for frame 0 later would seek back to the stream's start.
    reader.frame_size = tuple(reader[0].shape[:2])
    return reader


def video_info(path: str | os.PathLike) -> VideoInfo:
    reader = open_video(path)
    return VideoInfo(str(path), len(reader), float(reader.get_avg_fps()), *reader.frame_size)


def segment_indices(frame_count: int, num_segments: int, generator: torch.Generator | None = None) -> list[int]:
    """One frame per equal segment of the video (TSN-style uniform sampling).

    With a `generator`, a random frame of each segment (training); without, each segment's middle
    frame (evaluation). Videos shorter than `num_segments` repeat frames.
    """
    if frame_count < 1 or num_segments < 1:
        raise ValueError(f"need frame_count >= 1 and num_segments >= 1, got {frame_count} and {num_segments}")
    edges = torch.linspace(0, frame_count, num_segments + 1, dtype=torch.float64)
    start, length = edges[:-1], edges[1:] - edges[:-1]
    offset = torch.rand(num_segments, generator=generator, dtype=torch.float64) if generator is not None else 0.5
    return (start + offset * length).floor().clamp(max=frame_count - 1).long().tolist()


def resample_indices(frame_count: int, source_fps: float, target_fps: float) -> list[int]:
    """Frame indices that resample a `source_fps` video to `target_fps`.

    `int(frame_count / source_fps * target_fps)` evenly spaced positions from the first frame to the
    last, truncated to frame numbers (`linspace(0, n - 1, count).astype(int)`): the rule of the
    original OAD feature extraction, used for every frame rate in this repository.
    """
    if source_fps <= 0 or target_fps <= 0:
        raise ValueError(f"fps must be positive, got source {source_fps} and target {target_fps}")
    count = max(1, int(frame_count / source_fps * target_fps))
    return np.linspace(0, frame_count - 1, count).astype(int).tolist()


def read_frames(reader, indices: Sequence[int], path: str) -> Tensor:
    """Decode `indices` (frame numbers) from a reader of `path` (`open_video`) -> uint8 [T, H, W, 3]."""
    frames = _read_decord(reader, indices, path)
    return torch.from_numpy(frames if frames is not None else _read_frames_pyav(path, indices))


def _read_decord(reader, indices: Sequence[int], path: str) -> np.ndarray | None:
    """decord's frames, or None where decord misreads this video (decode it with PyAV instead)."""
    height, width = reader.frame_size
    try:
        frames = reader.get_batch(list(indices)).asnumpy()
    except Exception as error:
        if not _decord_misreads(width):
            raise VideoReadError(
                f"cannot decode frames {indices[0]}..{indices[-1]} of {path}: {str(error).splitlines()[0]}"
            ) from error
        return None
    return frames if frames.shape[1:] == (height, width, 3) else None


def _decord_misreads(width: int) -> bool:
    # decord 0.6 copies rows with a padded stride for some narrow widths (16, 24, 48, 72 px...)
    # and fails or returns 4-channel garbage; such videos are decoded with PyAV instead.
    return width < 128


def _read_frames_pyav(path: str, indices: Sequence[int]) -> np.ndarray:
    decoder = _ForwardPyAV(path)
    try:
        return np.stack([decoder.frame(i) for i in indices])
    finally:
        decoder.close()


class _ForwardPyAV:
    """One forward decoding pass over a file with PyAV: `frame(i)` decodes up to frame i.

    Asking for frames in non-decreasing order decodes the file once; asking for an earlier
    frame re-opens it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._open()

    def _open(self) -> None:
        import av

        try:
            self.container = av.open(self.path)
        except Exception as error:
            raise VideoReadError(f"cannot decode {self.path}: {error}") from error
        self.decoded = self.container.decode(video=0)
        self.index, self.current = -1, None

    def frame(self, i: int) -> np.ndarray:
        if i < self.index:
            self.close()
            self._open()
        try:
            while self.index < i:
                self.current = next(self.decoded)
                self.index += 1
        except StopIteration:
            raise VideoReadError(f"{self.path} ended before frame {i} (truncated file?)") from None
        except Exception as error:
            raise VideoReadError(f"cannot decode {self.path}: {error}") from error
        return self.current.to_ndarray(format="rgb24")

    def close(self) -> None:
        self.container.close()


class FrameDecoder:
    """The frames of one video on demand, in bounded memory: `read(indices)` decodes just those.

    decord seeks to them; a video decord misreads goes through one forward PyAV pass instead
    (re-opened only to go back), so reading a long video chunk by chunk decodes it once.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.reader = open_video(path)
        self.frame_count = len(self.reader)
        self.fps = float(self.reader.get_avg_fps())
        self._pyav: _ForwardPyAV | None = None  # set once decord has misread this video

    def read(self, indices: Sequence[int]) -> Tensor:
        """uint8 frames [t, H, W, 3] of `indices` (frame numbers)."""
        if self._pyav is None:
            frames = _read_decord(self.reader, indices, self.path)
            if frames is not None:
                return torch.from_numpy(frames)
            self._pyav = _ForwardPyAV(self.path)
        return torch.from_numpy(np.stack([self._pyav.frame(i) for i in indices]))


def preprocess(frames: Tensor, size: int = 224, mode: str = "resize") -> Tensor:
    """uint8 frames [T, H, W, 3] -> float [T, 3, size, size] in [-1, 1].

    `resize` stretches to size x size with bicubic (SigLIP's processor); `center_crop` resizes the
    short side to `size` (bilinear) and crops the centre (the OAD feature protocol).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    x = frames.permute(0, 3, 1, 2).float()
    if mode == "resize":
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    else:
        x = resize_short_side(x, size)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top : top + size, left : left + size]
    return normalise(x)


def resize_short_side(x: Tensor, size: int) -> Tensor:
    """Float frames [T, 3, H, W] with the short side resized to `size` (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    return F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear", antialias=True)


def normalise(x: Tensor) -> Tensor:
    """Float pixels in [0, 255] -> [-1, 1]: SigLIP's mean 0.5 and std 0.5 after /255."""
    return (x.clamp(0, 255) / 255.0 - 0.5) / 0.5


def load_clip(
    path: str | os.PathLike,
    clip_length: int = 16,
    size: int = 224,
    mode: str = "resize",
    generator: torch.Generator | None = None,
) -> Tensor:
    """A clip of `clip_length` uniformly sampled frames -> [clip_length, 3, size, size]."""
    reader = open_video(path)
    return preprocess(read_frames(reader, segment_indices(len(reader), clip_length, generator), str(path)), size, mode)


class FrameSource:
    """The frames of a video file in chunks, for streaming: yields ([t, 3, S, S], frame indices).

    Frames are decoded chunk by chunk as they are consumed (`FrameDecoder`): memory does not grow
    with the video's length.

    Args:
        path: video file.
        chunk_size: frames per chunk (the last one may be shorter).
        fps: resample to this rate first (`resample_indices`; None: every decoded frame).
        size, mode: preprocessing, see `preprocess`.
    """

    def __init__(
        self, path: str | os.PathLike, chunk_size: int = 1, fps: float | None = None, size: int = 224, mode: str = "resize"
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.path = str(path)
        self.decoder = FrameDecoder(path)
        self.source_fps = self.decoder.fps
        total = self.decoder.frame_count
        self.indices = resample_indices(total, self.source_fps, fps) if fps else list(range(total))
        self.fps = fps or self.source_fps
        self.chunk_size, self.size, self.mode = chunk_size, size, mode

    def __len__(self) -> int:
        """Number of chunks."""
        return -(-len(self.indices) // self.chunk_size)

    @property
    def frame_count(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[Tensor, list[int]]]:
        for start in range(0, len(self.indices), self.chunk_size):
            indices = self.indices[start : start + self.chunk_size]
            yield preprocess(self.decoder.read(indices), self.size, self.mode), indices


def write_video(path: str | os.PathLike, frames: Tensor | np.ndarray, fps: float = 25.0) -> Path:
    """Encode uint8 RGB frames [T, H, W, 3] to an H.264 mp4 with PyAV (written atomically)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs even height and width, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # mbtree off: with it, libx264 reads uninitialised memory on tiny frames and the same
        # frames do not always encode to the same bytes (the synthetic world must be deterministic).
        stream.options = {"crf": "18", "g": "16", "x264-params": "mbtree=0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return path
