"""Tiny models and checkpoints the tests build themselves (nothing is downloaded).

A module with its own name, not conftest.py: several packages have a conftest, and
`from conftest import ...` would pick whichever was imported first."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from transformers import SiglipConfig, SiglipModel


def tiny_siglip(hidden_act: str = "gelu", seed: int = 0) -> SiglipModel:
    torch.manual_seed(seed)
    config = SiglipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act=hidden_act,
        ),
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():  # SigLIP's init leaves biases at 0 and the logit pair at 0: make them count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def original_layout_checkpoint(directory, num_layers: int = 12, lora: bool = True, prefix: str = "", seed: int = 0):
    """Write a random checkpoint in the ORIGINAL StreamFormer layout (`timesformer.*` keys, fused qkv, LoRA) and its
    original config.json (model_type "timesformer"); returns (state_dict, config dict)."""
    d, i, n, f, r = 32, 64, 16, 8, 4
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return 0.2 * torch.randn(*shape, generator=g)

    state = {
        "embeddings.position_embeddings": rnd(1, n, d),
        "embeddings.time_embeddings": rnd(1, f, d),
        "embeddings.patch_embeddings.projection.weight": rnd(d, 3, 8, 8),
        "embeddings.patch_embeddings.projection.bias": rnd(d),
    }
    for layer in range(num_layers):
        p = f"encoder.layer.{layer}."
        state[p + "temporal_attention_gating"] = torch.tensor(0.5)
        state[p + "attention.attention.qkv.weight"] = rnd(3 * d, d)
        state[p + "attention.attention.qkv.bias"] = rnd(3 * d)
        if lora:
            state[p + "attention.attention.qkv_lora_a.weight"] = rnd(r, d)
            state[p + "attention.attention.qkv_lora_b.weight"] = rnd(3 * d, r)
        state[p + "attention.output.dense.weight"] = rnd(d, d)
        state[p + "attention.output.dense.bias"] = rnd(d)
        if lora:
            state[p + "attention.output.dense_lora_a.weight"] = rnd(r, d)
            state[p + "attention.output.dense_lora_b.weight"] = rnd(d, r)
        state[p + "intermediate.dense.weight"] = rnd(i, d)
        state[p + "intermediate.dense.bias"] = rnd(i)
        state[p + "output.dense.weight"] = rnd(d, i)
        state[p + "output.dense.bias"] = rnd(d)
        for norm in ("layernorm_before", "layernorm_after", "temporal_layernorm"):
            state[p + norm + ".weight"] = 1 + rnd(d) / 2
            state[p + norm + ".bias"] = rnd(d)
        state[p + "temporal_attention.attention.mask"] = torch.ones(f, f).tril()
        state[p + "temporal_attention.attention.qkv.weight"] = rnd(3 * d, d)
        state[p + "temporal_attention.attention.qkv.bias"] = rnd(3 * d)
        state[p + "temporal_attention.output.dense.weight"] = rnd(d, d)
        state[p + "temporal_attention.output.dense.bias"] = rnd(d)
        state[p + "temporal_dense.weight"] = rnd(d, d)
        state[p + "temporal_dense.bias"] = rnd(d)
    state |= {
        "post_layernorm.weight": 1 + rnd(d) / 2,
        "post_layernorm.bias": rnd(d),
        "head.probe": rnd(1, 1, d),
        "head.attention.in_proj_weight": rnd(3 * d, d),
        "head.attention.in_proj_bias": rnd(3 * d),
        "head.attention.out_proj.weight": rnd(d, d),
        "head.attention.out_proj.bias": rnd(d),
        "head.layernorm.weight": 1 + rnd(d) / 2,
        "head.layernorm.bias": rnd(d),
        "head.mlp.fc1.weight": rnd(i, d),
        "head.mlp.fc1.bias": rnd(i),
        "head.mlp.fc2.weight": rnd(d, i),
        "head.mlp.fc2.bias": rnd(d),
    }
    state = {prefix + k: v.contiguous() for k, v in state.items()}
    config = {
        "model_type": "timesformer",
        "architectures": ["TimesformerMultiTaskingModelSigLIP"],
        "image_size": 32,
        "patch_size": 8,
        "num_channels": 3,
        "num_frames": f,
        "hidden_size": d,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "intermediate_size": i,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "attention_type": "divided_space_time",
        "drop_path_rate": 0,  # an int in the original config.json (its default); transformers reads it strictly
        "clip_config": {"model_type": "siglip"},
        "enable_causal_temporal": True,
        "add_lora_spatial": lora,
        "transformers_version": "4.52.3",
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(config))
    return state, config
