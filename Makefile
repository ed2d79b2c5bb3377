# StreamFormer monorepo. `make demo` and `make test` work on a fresh machine: they create
# .venv, install every package in editable mode with the pins of constraints.txt, then run.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := $(wildcard packages/*/pyproject.toml)
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo stream-demo oad-demo videoqa-demo streaming-qa-demo ovis-demo ovis-seeds ar-demo seeds ablation-temporal ablation-tasks test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: constraints.txt $(PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(foreach p,$(dir $(PACKAGES)),-e $(p)[test]) ruff 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import streamformer, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# The main job on the embedded default: write the synthetic world, pretrain the tiny model on its
# six tasks, evaluate on held-out videos (table to docs/), export the backbone and stream a
# held-out video through it frame by frame.
TINY := runs/pretrain-tiny
demo: setup
	@echo "== 1/5 writing the synthetic world (runs/world)"
	$(BIN)/streamformer synthetic runs/world
	@echo "== 2/5 pretraining the tiny StreamFormer on six tasks (configs/pretrain/synthetic-tiny.yaml)"
	$(BIN)/streamformer-pretrain fit --config configs/pretrain/synthetic-tiny.yaml --trainer.enable_progress_bar true --trainer.enable_model_summary false
	@echo "== 3/5 evaluating on the held-out videos"
	$(BIN)/streamformer-pretrain evaluate $(TINY)/checkpoints/last.ckpt --root runs/world --output docs/pretrain/synthetic-tiny.md > /dev/null
	@echo "== 4/5 exporting the backbone"
	$(BIN)/streamformer-pretrain export $(TINY)/checkpoints/last.ckpt $(TINY)/backbone
	@echo "== 5/5 streaming a held-out video through it frame by frame (KV cache, 16-frame window)"
	$(BIN)/streamformer stream runs/world/videos/v000800.mp4 $(TINY)/backbone --max_frames 16 --print_every 24 --plot $(TINY)/stream.png
	@echo ""
	@cat docs/pretrain/synthetic-tiny.md
	@echo ""
	@echo "One training run (seed 0); figures vary by a few hundredths with the seed and the machine:"
	@echo "docs/pretrain/seeds-demo.md has mean ± std over seeds (make seeds)."
	@echo "Files: docs/pretrain/synthetic-tiny.md (table), $(TINY)/checkpoints/last.ckpt (Lightning),"
	@echo "       $(TINY)/backbone (StreamFormerVisionModel.from_pretrained), $(TINY)/stream.png (per-frame plot)."

# Learned figures as mean ± std over seeds (each seed: initialisation and data order; the world is
# fixed): the demo recipe, the OAD comparison on each seed's backbone, and both ablations in the
# paper's direction (Tables 6 and 5). Resumable: finished runs under runs/studies are reused.
# About 2.5 hours on 2 cores for three seeds.
SEEDS ?= 0 1 2
STUDY := $(BIN)/python -m streamformer_pretrain.studies
comma := ,
seeds: setup
	test -f runs/world/world.json || $(BIN)/streamformer synthetic runs/world
	$(STUDY) demo --seeds $(SEEDS) --output docs/pretrain/seeds-demo.md
	$(BIN)/streamformer-oad seeds --seeds "[$(subst $(eval) ,$(comma),$(strip $(SEEDS)))]" --report docs/oad/seeds.md
	$(STUDY) temporal --seeds $(SEEDS) --output docs/pretrain/ablation-temporal.md
	$(STUDY) tasks --seeds $(SEEDS) --output docs/pretrain/ablation-tasks.md

ablation-temporal ablation-tasks: setup
	test -f runs/world/world.json || $(BIN)/streamformer synthetic runs/world
	$(STUDY) $(@:ablation-%=%) --seeds $(SEEDS) --output docs/pretrain/$@.md

# Online action detection on the synthetic world (after `make demo`, which it runs if needed):
# OAD features of every video from the pretrained tiny backbone (our stream protocol, the
# original 6-frame chunks, and the stream with the temporal branch off), MAT trained on each,
# per-frame mAP against chance, and a plot of one held-out video's scores (docs/oad/).
oad-demo: setup
	test -f $(TINY)/backbone/config.json || $(MAKE) demo
	$(BIN)/streamformer-oad demo --backbone $(TINY)/backbone --world runs/world --docs docs/oad

# Video QA on the synthetic world (after `make demo`): a tiny word-level LM on the pretrained
# backbone, with the backbone's temporal gates off, and on the questions alone; held-out accuracy
# against chance over SEEDS (docs/videoqa/synthetic.md).
videoqa-demo: setup
	test -f $(TINY)/backbone/config.json || $(MAKE) demo
	$(BIN)/streamformer-videoqa demo --backbone $(TINY)/backbone --world runs/world --seeds "[$(subst $(eval) ,$(comma),$(strip $(SEEDS)))]"

# Streaming video QA with bounded memory (after `make videoqa-demo`, whose seed-0 model it uses):
# the world's videos stitched into 1-, 10- and 60-minute streams with timed questions, every
# memory policy on them side by side, and `recent` again with the model fine-tuned on the
# contexts it leaves (training streams of the train split) (docs/videoqa/memory.md and a plot).
streaming-qa-demo: setup
	test -f runs/videoqa/seed0/video/stage3/tokenizer.json || $(MAKE) videoqa-demo
	test -f runs/videoqa-aligned/model/tokenizer.json || $(BIN)/streamformer-videoqa align \
		--model runs/videoqa/seed0/video/stage3 --world runs/world --output runs/videoqa-aligned
	$(BIN)/streamformer-videoqa bench-memory --config configs/videoqa/memory-synthetic.yaml

# Action recognition on the synthetic world (after `make demo`): zero-shot, linear probe and LoRA
# fine-tuning of the pretrained backbone, the same with its temporal gates off and the model as
# initialised before pretraining, over SEEDS (docs/pretrain/ar-synthetic.md), and zero-shot
# top-1 by frames seen (docs/pretrain/ar-streaming.md).
ar-demo: setup
	test -f $(TINY)/checkpoints/last.ckpt || $(MAKE) demo
	$(BIN)/streamformer-pretrain ar-curves --checkpoint $(TINY)/checkpoints/last.ckpt --root runs/world --output docs/pretrain/ar-streaming.md
	$(BIN)/streamformer-pretrain ar-demo --checkpoint $(TINY)/checkpoints/last.ckpt --world runs/world --seeds "[$(subst $(eval) ,$(comma),$(strip $(SEEDS)))]"

# Online video instance segmentation on the synthetic world (after `make demo`): CTVIS on a
# ViT-Adapter around the pretrained tiny backbone, trained on the world's instance masks, every
# held-out video streamed through the cache and the tracker; AP / AR of the trained model, of the
# same with the temporal gates off, and of the untrained model. `ovis-demo`: seed 0 (each
# training about 4 minutes on 2 cores; runs/ovis/demo/); `ovis-seeds`: seeds 0-2, mean ± std (finished runs
# reused; docs/ovis/synthetic.md and one held-out video's tracks drawn, docs/ovis/overlay.png).
OVIS := $(BIN)/streamformer-ovis demo --backbone $(TINY)/backbone --world runs/world
ovis-demo ovis-seeds: setup
	test -f $(TINY)/backbone/config.json || $(MAKE) demo
	test -f runs/world/vis/val_Synthetic.json || $(BIN)/streamformer synthetic runs/world
	$(if $(filter ovis-demo,$@),$(OVIS) --seeds "[0]" --docs runs/ovis/demo,$(OVIS) --seeds "[$(subst $(eval) ,$(comma),$(strip $(SEEDS)))]" --docs docs/ovis)

# Streaming only: a random tiny StreamFormer on one synthetic clip (seconds).
stream-demo: setup
	$(BIN)/python -m streamformer.demo --output runs/demo

test: setup
	$(BIN)/python -m pytest packages -q

lint: setup
	$(BIN)/ruff check packages benchmarks
	$(BIN)/ruff format --check packages benchmarks

bench: setup
	$(BIN)/python benchmarks/streaming_latency.py --output docs/benchmarks/streaming_latency.md
	$(BIN)/python benchmarks/history_scaling.py --output docs/benchmarks/history_scaling.md
	$(BIN)/python benchmarks/ovis_latency.py --output docs/benchmarks/ovis_latency.md

clean:
	rm -rf $(VENV) runs .pytest_cache
