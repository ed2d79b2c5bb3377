"""Checkpoints in and out: SigLIP initialisation, the original StreamFormer layout, our format.

* `from_siglip(path)`: a fresh StreamFormer from a transformers SigLIP directory (the recipe of the
  original init script: spatial weights copied, temporal weights new, gates 0).
* `load_original(path)`: the released / trained original checkpoint, key for key (optional
  `timesformer.` prefix, unused `mask` buffers, LoRA kept or merged), with a report that names
  every key that was not used.
* Our own format is `save_pretrained` / `from_pretrained` (safetensors).

Every public loading route gives the same model or refuses: `StreamFormerVisionModel.from_pretrained`
and `AutoModel.from_pretrained` convert an original checkpoint on the fly (with the report of
`streamformer convert`), refuse SigLIP and TimeSformer checkpoints with the command to run, and
refuse weights that do not cover the model unless `allow_partial=True`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import AutoModel, SiglipModel, SiglipVisionModel, TimesformerConfig, TimesformerModel
from transformers.utils import cached_file

from .config import StreamFormerConfig, is_original_config
from .model import StreamFormerModel, StreamFormerPreTrainedModel, StreamFormerVisionModel

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# `from_pretrained` arguments that say where files come from (a local folder or a hub cache).
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def default_device(device: str | None = None) -> str:
    """`device`, or CUDA when there is one (the commands' default)."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


_AUTO_KWARGS = ("adapter_kwargs", "trust_remote_code", "code_revision", "output_loading_info", "use_safetensors", "weights_only")
_ORIGINAL_LORA = re.compile(r"^(encoder\.layer\.\d+\.attention\.(?:attention\.qkv|output\.dense))_lora_([ab])\.weight$")


@dataclass
class LoadReport:
    """What happened to every key of a checkpoint: used, or listed here by name."""

    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint keys skipped on purpose -> why

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        lines = [f"missing: {len(self.missing)}, unexpected: {len(self.unexpected)}, ignored: {len(self.ignored)}"]
        lines += [f"  missing     {k}" for k in self.missing]
        lines += [f"  unexpected  {k}" for k in self.unexpected]
        lines += [f"  ignored     {k} ({why})" for k, why in self.ignored.items()]
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a weights file or of the weights file in a directory.

    `.safetensors` directly; anything else through `torch.load(weights_only=True)` (no pickled
    code is ever executed). A training checkpoint dict `{"model": state_dict, ...}` yields its model.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no weights in {path}: expected one of {WEIGHT_FILES}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        # The original's training checkpoints also hold its argparse options (`args`).
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"cannot load {path} with weights_only=True ({error}); re-save its tensors with torch.save(state_dict) or safetensors"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def _place_lora_base_weights(state: dict[str, Tensor], model: StreamFormerVisionModel) -> dict[str, Tensor]:
    """Rename `...qkv.weight` to `...qkv.base_layer.weight` where the model wraps that Linear in LoRA."""
    model_keys = set(model.state_dict())
    placed = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        wrapped = f"{stem}.base_layer.{leaf}"
        placed[wrapped if key not in model_keys and wrapped in model_keys else key] = value
    return placed


def _load_into(model: torch.nn.Module, state: dict[str, Tensor], report: LoadReport) -> LoadReport:
    result = model.load_state_dict(state, strict=False)
    report.missing += list(result.missing_keys)
    report.unexpected += list(result.unexpected_keys)
    return report


# ---------------------------------------------------------------------------------------------
# SigLIP -> StreamFormer


def siglip_vision_state_dict(siglip_vision: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a SigLIP vision tower state dict (keys after `vision_model.`) to StreamFormer names."""
    out: dict[str, Tensor] = {}
    for key, value in siglip_vision.items():
        if key == "embeddings.position_embedding.weight":
            out["embeddings.position_embeddings"] = value[None]
        elif key.startswith("embeddings.patch_embedding."):
            out[key.replace("embeddings.patch_embedding.", "embeddings.patch_embeddings.projection.")] = value
        elif key.startswith(("post_layernorm.", "head.")):
            out[key] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)$", key):
            i, rest = m.groups()
            if re.match(r"self_attn\.[qkv]_proj\.", rest):
                if rest.startswith("self_attn.q_proj."):  # fuse [q; k; v] once, at q
                    leaf = rest.rpartition(".")[2]
                    parts = [siglip_vision[f"encoder.layers.{i}.self_attn.{p}_proj.{leaf}"] for p in "qkv"]
                    out[f"encoder.layer.{i}.attention.attention.qkv.{leaf}"] = torch.cat(parts)
                continue
            renames = {
                "self_attn.out_proj.": "attention.output.dense.",
                "layer_norm1.": "layernorm_before.",
                "layer_norm2.": "layernorm_after.",
                "mlp.fc1.": "intermediate.dense.",
                "mlp.fc2.": "output.dense.",
            }
            prefix = next(p for p in renames if rest.startswith(p))
            out[f"encoder.layer.{i}.{renames[prefix]}{rest[len(prefix) :]}"] = value
        elif key != "embeddings.position_ids":
            raise KeyError(f"unknown SigLIP vision key {key!r}")
    return out


def from_siglip(
    path: str | os.PathLike,
    num_frames: int = 16,
    hidden_act: str | None = "gelu",
    add_lora_spatial: bool = True,
    lora_rank: int = 32,
    with_text: bool | None = None,
    generator: torch.Generator | None = None,
) -> StreamFormerModel | StreamFormerVisionModel:
    """A new StreamFormer initialised from a transformers SigLIP checkpoint directory.

    Spatial attention, MLPs, patch/position embeddings, post-LayerNorm and pooling head come from
    SigLIP. Temporal attention, `temporal_dense` (weights and biases) and the time embeddings are
    drawn from N(0, initializer_range); gates are 0 and temporal LayerNorms the identity, so each
    frame goes through SigLIP's computation except for the time embedding and, unless
    `hidden_act` keeps SigLIP's tanh GELU, the exact GELU of the original.

    Args:
        path: directory (or hub id) of a `SiglipModel` or `SiglipVisionModel`.
        hidden_act: activation for our blocks; the original uses exact `"gelu"` (None keeps SigLIP's).
        with_text: also copy the text tower and logit scale/bias (a `StreamFormerModel`); default:
            when the checkpoint has one.
    """
    source_config = json.loads((Path(path) / "config.json").read_text()) if Path(path).is_dir() else None
    has_text = source_config is None or "text_config" in source_config or source_config.get("model_type") == "siglip"
    with_text = has_text if with_text is None else with_text
    if with_text and not has_text:
        raise ValueError(f"{path} holds a SigLIP vision tower only: cannot build the text tower (with_text=False)")
    siglip = (SiglipModel if has_text else SiglipVisionModel).from_pretrained(path)
    vision_cfg = siglip.config.vision_config if has_text else siglip.config
    text_config = siglip.config.text_config.to_dict() if with_text else None
    for name in ("bos_token_id", "eos_token_id", "pad_token_id") if with_text else ():
        value = text_config.get(name)
        if isinstance(value, int) and not 0 <= value < text_config["vocab_size"]:
            del text_config[name]  # transformers' CLIP defaults, outside SigLIP's vocabulary: SigLIP's own
    config = StreamFormerConfig(
        image_size=vision_cfg.image_size,
        patch_size=vision_cfg.patch_size,
        num_channels=vision_cfg.num_channels,
        num_frames=num_frames,
        hidden_size=vision_cfg.hidden_size,
        num_hidden_layers=vision_cfg.num_hidden_layers,
        num_attention_heads=vision_cfg.num_attention_heads,
        intermediate_size=vision_cfg.intermediate_size,
        hidden_act=hidden_act or vision_cfg.hidden_act,
        layer_norm_eps=vision_cfg.layer_norm_eps,
        add_lora_spatial=add_lora_spatial,
        lora_rank=lora_rank,
        lora_alpha=float(lora_rank),
        text_config=text_config,
    )
    model = StreamFormerModel(config) if with_text else StreamFormerVisionModel(config)
    vision = model.timesformer if with_text else model
    siglip_vision = (siglip.vision_model if has_text else siglip).state_dict()
    state = _place_lora_base_weights(siglip_vision_state_dict(siglip_vision), vision)
    report = _load_into(vision, state, LoadReport())
    new = [k for k in report.missing if not re.search(r"temporal|time_embeddings|lora_", k)]
    if new or report.unexpected:
        raise RuntimeError(f"SigLIP mapping incomplete:\n{report}")
    with torch.no_grad():
        std = config.initializer_range
        for name, param in vision.named_parameters():
            if name.endswith("temporal_attention_gating"):
                param.zero_()
            elif re.search(r"temporal_attention\.|temporal_dense\.|time_embeddings", name):
                param.normal_(0.0, std, generator=generator)  # weights and biases, as the original
        if with_text:
            model.text_encoder.load_state_dict(siglip.text_model.state_dict())
            model.logit_scale.copy_(siglip.logit_scale.reshape(()))
            model.logit_bias.copy_(siglip.logit_bias.reshape(()))
    logger.info("initialised StreamFormer from SigLIP %s (%d new temporal tensors)", path, len(report.missing))
    return model


# ---------------------------------------------------------------------------------------------
# Original StreamFormer checkpoint -> ours


def original_vision_state_dict(state: dict[str, Tensor], report: LoadReport) -> dict[str, Tensor]:
    """Keep the vision tower's tensors of an original checkpoint, with the `timesformer.` prefix gone.

    Unused mask buffers, the text tower, task heads and logit scale/bias are recorded in
    `report.ignored` with the reason.
    """
    prefixed = any(k.startswith("timesformer.") for k in state)
    vision: dict[str, Tensor] = {}
    for key, value in state.items():
        if prefixed and not key.startswith("timesformer."):
            report.ignored[key] = "not part of the vision tower (text encoder, task head or logit scale/bias)"
            continue
        key = key.removeprefix("timesformer.")
        if key.endswith("temporal_attention.attention.mask"):
            report.ignored[key] = "constant causal-mask buffer, unused by the original forward"
            continue
        vision[key] = value
    return vision


def _lora_pairs(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if m := _ORIGINAL_LORA.match(key):
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
    return pairs


def load_original(
    path: str | os.PathLike,
    config: str | os.PathLike | dict[str, Any] | None = None,
    merge_lora: bool = False,
    strict: bool = True,
    **config_overrides: Any,
) -> tuple[StreamFormerVisionModel, LoadReport]:
    """Load an original StreamFormer checkpoint into `StreamFormerVisionModel`.

    Args:
        path: a directory with the original `config.json` and `model.safetensors` or
            `pytorch_model.bin`, or a weights file (then pass `config`). Training checkpoints
            (`{"model": ...}` dicts with `timesformer.`-prefixed keys) work too.
        config: the original config (dict or path to its JSON) when `path` is a file.
        merge_lora: fold the LoRA tensors into the spatial weights (W + B @ A, scale 1) instead of
            keeping LoRA adapters.
        strict: raise if any key is missing or unexpected (the report names them all).
        config_overrides: fields to set on the converted config (e.g. `temporal_position`).
    """
    path = Path(path)
    if config is None:
        config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    original_config = config if isinstance(config, dict) else json.loads(Path(config).read_text())
    report = LoadReport()
    state = original_vision_state_dict(read_state_dict(path), report)

    pairs = _lora_pairs(state)
    if any(set(p) != {"a", "b"} for p in pairs.values()):
        raise ValueError("checkpoint has LoRA A without B (or B without A)")
    rank = next(iter(pairs.values()))["a"].shape[0] if pairs else 0
    # The original has no LoRA alpha: its update is B @ A unscaled, i.e. alpha = rank.
    keep_lora = bool(pairs) and not merge_lora
    overrides = dict(add_lora_spatial=keep_lora, **({"lora_rank": rank, "lora_alpha": float(rank)} if pairs else {}))
    model = StreamFormerVisionModel(StreamFormerConfig.from_original(original_config, **overrides, **config_overrides))

    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _ORIGINAL_LORA.match(key):
            if keep_lora:
                converted[f"{m.group(1)}.lora_{m.group(2).upper()}.default.weight"] = value
            continue
        converted[key] = value
    if pairs and merge_lora:
        for target, ab in pairs.items():
            weight = converted[f"{target}.weight"]
            converted[f"{target}.weight"] = (weight.double() + ab["b"].double() @ ab["a"].double()).to(weight.dtype)
    _load_into(model, _place_lora_base_weights(converted, model), report)
    if report.ignored:
        logger.info("ignored %d checkpoint keys:\n%s", len(report.ignored), "\n".join(report.ignored))
    if not report.ok:
        message = f"original checkpoint {path} does not match the model:\n{report}"
        if strict:
            raise ValueError(message)
        logger.warning(message)
    return model, report


def read_config(path: str | os.PathLike, **hub_kwargs: Any) -> dict[str, Any]:
    """The config.json of a checkpoint folder or hub id, as a dict."""
    try:
        config_file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    except OSError as error:  # neither a folder here nor a hub id that can be read
        raise FileNotFoundError(f"no checkpoint at {path}: not a folder, and not readable as a hub id ({error})") from error
    if config_file is None:
        raise FileNotFoundError(f"no config.json in {path}")
    return json.loads(Path(config_file).read_text())


def detect_format(path: str | os.PathLike, **hub_kwargs: Any) -> str:
    """ "siglip", "original" or "streamformer", from the checkpoint's config.json."""
    return config_format(read_config(path, **hub_kwargs), path)


def config_format(config: dict[str, Any], path: str | os.PathLike) -> str:
    """ "siglip", "original" or "streamformer", from a checkpoint's config dict (`path` names it in errors)."""
    model_type = config.get("model_type")
    if model_type in ("siglip", "siglip_vision_model"):
        return "siglip"
    if model_type == "streamformer":
        return "streamformer"
    if model_type == "timesformer":
        if is_original_config(config):
            return "original"
        raise ValueError(f"{path} is a transformers TimeSformer checkpoint, not a StreamFormer one")
    raise ValueError(
        f"{path}: config.json model_type {model_type!r} is none of siglip, timesformer (original StreamFormer), streamformer"
    )


def conversion_report(path: str | os.PathLike, report: LoadReport) -> str:
    """What `streamformer convert` prints, and `from_pretrained` logs when it converts on the fly."""
    return f"converted the original StreamFormer checkpoint {path}: {report}"


def _original_weights(path: str | os.PathLike, **hub_kwargs: Any) -> str:
    for name in WEIGHT_FILES:
        found = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if found is not None:
            return found
    raise FileNotFoundError(f"no weights in {path}: expected one of {WEIGHT_FILES}")


def convert_if_original(
    cls: type[StreamFormerPreTrainedModel], path: str | os.PathLike, kwargs: dict[str, Any], allow_partial: bool
) -> StreamFormerVisionModel | None:
    """`from_pretrained`'s first step: the converted model when `path` holds an original
    checkpoint, None when it holds ours; a clear error for SigLIP and TimeSformer checkpoints.

    `kwargs` are `from_pretrained`'s: where files come from, `dtype`, `attn_implementation`,
    `merge_lora` and config fields (e.g. `temporal_position`) are honoured; anything else is refused.
    """
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    config = read_config(path, **hub_kwargs)
    kind = config_format(config, path)
    if kind == "streamformer":
        return None
    if kind == "siglip":
        raise ValueError(
            f"{path} is a SigLIP checkpoint: `streamformer convert {path} OUTPUT` (or "
            "streamformer.checkpoints.from_siglip) initialises a StreamFormer from it"
        )
    if cls is not StreamFormerVisionModel:
        raise ValueError(
            f"{path} is an original StreamFormer checkpoint, which holds the video tower only: load it with "
            f"StreamFormerVisionModel.from_pretrained, or write it in our format with `streamformer convert {path} OUTPUT`"
        )
    # What AutoModel adds on its own (adapter look-up options, trust_remote_code) has nothing to do here.
    options = {k: v for k, v in kwargs.items() if k not in HUB_KWARGS and k not in _AUTO_KWARGS and not k.startswith("_")}
    merge = bool(options.pop("merge_lora", False))
    dtype = options.pop("dtype", None) or options.pop("torch_dtype", None)
    attention = options.pop("attn_implementation", None)
    overrides = {k: options.pop(k) for k in list(options) if k in StreamFormerConfig.__dataclass_fields__}
    if options:
        raise TypeError(
            f"from_pretrained options {sorted(options)} are not supported while converting the original checkpoint "
            f"{path} on the fly: run `streamformer convert {path} OUTPUT` once, then load OUTPUT with them"
        )
    model, report = load_original(
        _original_weights(path, **hub_kwargs), config=config, merge_lora=merge, strict=not allow_partial, **overrides
    )
    logger.warning(conversion_report(path, report))
    if attention is not None:
        model.set_attn_implementation(attention)
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model.eval()


def check_weights_cover(model: torch.nn.Module, info: dict[str, Any], path: str | os.PathLike, allow_partial: bool) -> None:
    """Refuse (or, with `allow_partial`, warn about) weights that leave part of the model at its
    random initialisation, or that hold tensors the model has no place for; every key is named."""
    mismatched = [f"{key} (checkpoint {tuple(a)}, model {tuple(b)})" for key, a, b in info.get("mismatched_keys", ())]
    problems = {
        "missing (left at random initialisation)": sorted(info.get("missing_keys", ())),
        "unexpected (not used)": sorted(info.get("unexpected_keys", ())),
        "of another shape (left at random initialisation)": sorted(mismatched),
    }
    if not any(problems.values()):
        return
    lines = [f"{len(keys)} keys {what}:\n" + "\n".join(f"  {k}" for k in keys) for what, keys in problems.items() if keys]
    message = f"the weights in {path} do not cover {type(model).__name__}; " + "\n".join(lines)
    if allow_partial:
        logger.warning(message)
        return
    raise ValueError(
        f"{message}\nPass allow_partial=True to load them anyway. An original StreamFormer checkpoint "
        f"(config.json model_type 'timesformer') converts with `streamformer convert {path} OUTPUT`."
    )


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32") -> StreamFormerVisionModel:
    """A StreamFormer vision model for inference, from our format or an original checkpoint:
    LoRA merged into the spatial weights (the same function, one matmul fewer per projection), in
    eval mode on `device` in `dtype` ("float32" or "bfloat16")."""
    model = StreamFormerVisionModel.from_pretrained(path)
    if model.config.add_lora_spatial:
        model.merge_lora()
    return model.to(device=device, dtype=DTYPES[dtype]).eval()


class OriginalAwareTimesformerModel(TimesformerModel):
    """What `AutoModel` builds for model_type "timesformer" once `streamformer` is imported:
    transformers' TimesformerModel, except that an original StreamFormer checkpoint (whose config
    says "timesformer" too, with StreamFormer's own fields) is converted on the fly to a
    `StreamFormerVisionModel` instead of being loaded into the wrong architecture."""

    config_class = TimesformerConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        config = kwargs.get("config")
        if isinstance(config, TimesformerConfig) and is_original_config(config.to_dict()):
            kwargs.pop("config")
            return StreamFormerVisionModel.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return TimesformerModel.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


AutoModel.register(TimesformerConfig, OriginalAwareTimesformerModel, exist_ok=True)
