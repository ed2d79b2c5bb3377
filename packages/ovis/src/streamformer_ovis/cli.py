"""`streamformer-ovis`: train, evaluate and run online video instance segmentation.

streamformer-ovis fit --config configs/ovis/synthetic-tiny.yaml        # LightningCLI: fit / validate / test
streamformer-ovis predict VIDEO --checkpoint CKPT --output DIR         # results JSON + overlay (PNG strip, mp4)
streamformer-ovis evaluate --annotations GT.json --results RESULTS.json [--output STATS.json]
streamformer-ovis demo --backbone runs/pretrain-tiny/backbone --world runs/world   # `make ovis-demo`
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from .data import VisDataModule
from .module import OnlineVISTraining

# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def evaluate(annotations: str, results: str, output: str | None = None) -> dict[str, float]:
    """YouTube-VIS AP, AP50, AP75, APs/m/l, AR1, AR10 of a result file against annotations.

    Args:
        annotations: YouTube-VIS JSON with annotations (a labelled split).
        results: result rows `[{video_id, category_id, score, segmentations}]`.
        output: also write the figures here as JSON.
    """
    from .ytvis_eval import evaluate_ytvis, format_table

    stats = evaluate_ytvis(annotations, results)
    print(format_table(stats))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(stats, indent=1))
    return stats


def predict(
    video: str,
    checkpoint: str,
    output: str = "runs/ovis/predict",
    size: int | None = None,
    chunk: int = 1,
    strip_frames: int = 8,
    mp4: bool = True,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Segment and track the instances of one video online (frame by frame through the cache).

    Writes `results.json` (YouTube-VIS rows, compressed RLE, `video_id` 0), `strip.png` (evenly
    spaced frames with each track's mask and id drawn) and, with `mp4`, `overlay.mp4`.

    Args:
        video: a video file, or a folder of frame images (sorted by name).
        checkpoint: a `.ckpt` from `streamformer-ovis fit`.
        output: the folder to write.
        size: short side of the frames fed to the model (default: the checkpoint's test size).
        chunk: frames per forward (1: strictly online).
        strip_frames: frames in the PNG strip.
        mp4: also write the overlay as an mp4.
        device: where the model runs (default: CUDA when available).
    """
    from streamformer.checkpoints import default_device

    from .data import evaluation_frames
    from .model import mask_encoder, video_results
    from .overlay import read_video_frames, write_overlays

    module = OnlineVISTraining.load_from_checkpoint(checkpoint, map_location="cpu")
    net = module.model.to(default_device(device)).eval()
    size = size or _test_size(checkpoint)
    frames = read_video_frames(video)
    first = next(iter(frames()))
    original = tuple(first.shape[1:3])
    resized = evaluation_frames(first[:1], size)[1]

    def model_frames():
        for chunk_frames in frames():
            if tuple(chunk_frames.shape[1:3]) != original:
                raise ValueError(f"{video}: frames of {tuple(chunk_frames.shape[1:3])} after frames of {original}")
            yield evaluation_frames(chunk_frames, size)[0]

    instances, count = net.track(model_frames(), module.tracker_config, chunk, mask_encoder(resized, original))
    results = video_results(instances, 0, module.categories.ids)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results))
    names = dict(zip(module.categories.ids, module.categories.names, strict=True))
    written = write_overlays(frames, results, names, out, strip_frames, mp4)
    print(f"{count} frames, {len(results)} instances -> {out / 'results.json'}, " + ", ".join(str(p) for p in written))
    return results


def _test_size(checkpoint: str) -> int:
    import torch

    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False).get("datamodule_hyper_parameters", {})
    return int(hparams.get("test_size", 224))


class OVISCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.category_lists", "model.categories", apply_on="instantiate")


def lightning_cli(args: list[str] | None = None, run: bool = True) -> OVISCLI:
    return OVISCLI(OnlineVISTraining, VisDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


FUNCTION_COMMANDS = ("predict", "evaluate", "demo")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in FUNCTION_COMMANDS:
        from jsonargparse import CLI

        from .demo import run_demo

        if argv[0] == "predict" and len(argv) > 1 and not argv[1].startswith("-"):
            argv = ["predict", "--video", *argv[1:]]  # `predict VIDEO ...`: the video may come first, unnamed
        CLI({"predict": predict, "evaluate": evaluate, "demo": run_demo}, args=argv, as_positional=False)
        return
    lightning_cli(argv)


if __name__ == "__main__":
    main()
