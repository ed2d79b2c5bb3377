"""`streamformer-oad`: features, MAT training and evaluation, per-frame score plots.

streamformer-oad extract BACKBONE VIDEOS OUTPUT_DIR [--protocol stream|chunks] [--max_frames 256] [--temporal false]
streamformer-oad fit --config configs/oad/synthetic-mat.yaml
streamformer-oad test --config configs/oad/synthetic-mat.yaml --ckpt_path CKPT [--data.evaluation online]
streamformer-oad plot CKPT [--session video_id] --output scores.png
streamformer-oad demo          # the synthetic comparison behind `make oad-demo`
streamformer-oad seeds         # the same over seeds (mean ± std), part of `make seeds`
"""

from __future__ import annotations

import sys
import warnings

from .module import lightning_cli

# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["extract"], ["plot"], ["demo"], ["seeds"]):
        from jsonargparse import CLI

        from .demo import plot, run_demo, run_seeds
        from .features import extract_features

        CLI({"extract": extract_features, "plot": plot, "demo": run_demo, "seeds": run_seeds}, args=argv, as_positional=True)
        return
    lightning_cli(argv if argv != sys.argv[1:] else None)


if __name__ == "__main__":
    main()
