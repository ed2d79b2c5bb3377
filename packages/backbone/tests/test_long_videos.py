"""Long videos in bounded memory: a stream of a thousand frames and more through the `encode` command
(decoded chunk by chunk, cache under the default window, features written as they come) keeps
its peak memory flat as the video's length doubles; an unbounded window does not."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamformer.tensor_file import SafetensorsWriter
from streamformer.testing import tiny_model
from streamformer.video import write_video

# 4 layers, 64 patches of width 64: a frame adds 128 KiB to an unbounded cache, so the 2000
# frames between the two lengths add 125 MiB; under the 256-frame window they add nothing.
CONFIG = dict(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=4, intermediate_size=128)
PEAK_RSS = (
    "import resource, sys; from streamformer.cli import main; main(sys.argv[1:]); "
    "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def encode_peak_mib(video, model_dir, output, *options) -> float:
    args = ["encode", str(video), str(model_dir), str(output), "--fps", "25", "--chunk_size", "32", "--device", "cpu", *options]
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.split("peak_kib")[-1]) / 1024


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    tiny_model(**CONFIG).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 255, (50, 64, 64, 3), dtype=np.uint8)
    videos = {n: write_video(root / f"{n}.mp4", np.tile(pattern, (n // 50, 1, 1, 1)), fps=25) for n in (1000, 2000)}
    return root, videos


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_peak_memory_stays_flat_as_the_video_doubles(long_videos):
    root, videos = long_videos
    short = encode_peak_mib(videos[1000], root / "model", root / "short.safetensors")
    long = encode_peak_mib(videos[2000], root / "model", root / "long.safetensors")
    unbounded = encode_peak_mib(videos[2000], root / "model", root / "unbounded.safetensors", "--max_frames", "null")
    print(f"peak RSS: 1000 frames {short:.0f} MiB, 2000 frames {long:.0f} MiB, 2000 unbounded {unbounded:.0f} MiB")
    assert long - short < 20, f"peak grew {long - short:.0f} MiB from 1000 to 2000 frames"
    assert unbounded - long > 150, "the measurement cannot tell a growing cache from a bounded one"
    features = load_file(root / "long.safetensors")
    assert features["spatial"].shape == (2000, 64, 64) and features["temporal"].shape == (2000, 64)
    torch.testing.assert_close(features["global"], features["temporal"][-1])


def test_safetensors_writer_fills_rows_in_place(tmp_path):
    spatial, temporal = torch.randn(5, 3, 2), torch.randn(5, 4)
    path = tmp_path / "f.safetensors"
    with SafetensorsWriter(path, {"spatial": (5, 3, 2), "temporal": (5, 4), "one": (4,)}, {"k": json.dumps([1, 2])}) as writer:
        for rows in (slice(0, 2), slice(2, 3), slice(3, 5)):  # interleaved, in uneven chunks
            writer.append("temporal", temporal[rows])
            writer.append("spatial", spatial[rows])
        writer.append("one", temporal[-1])
    loaded = load_file(path)
    assert torch.equal(loaded["spatial"], spatial) and torch.equal(loaded["temporal"], temporal)
    assert torch.equal(loaded["one"], temporal[-1])
    with pytest.raises(ValueError, match="do not fit"), SafetensorsWriter(tmp_path / "g.safetensors", {"x": (2, 2)}) as writer:
        writer.append("x", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="rows written"), SafetensorsWriter(tmp_path / "h.safetensors", {"x": (2, 2)}) as writer:
        writer.append("x", torch.zeros(1, 2))
    with pytest.raises(RuntimeError), SafetensorsWriter(tmp_path / "i.safetensors", {"x": (1, 2)}) as writer:
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]  # no partial or failed file left
