"""The segmentation head, per frame: transformers' Mask2Former pixel decoder and masked-attention
decoder, with the class head and CTVIS's ReID head added on the decoder's query states.

`Mask2FormerTransformerModule` has no class head and no ReID head; the ReID embedding (a 3-layer
MLP on the last layer's normed queries) is what the tracker matches across frames. The head is a
`Mask2FormerPreTrainedModel` so that every part gets Mask2Former's own initialisation (deformable
attention offsets on a ring, xavier decoder layers, the pixel decoder's level embedding, which
the module leaves uninitialised).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

LEVELS = ("res2", "res3", "res4", "res5")


@dataclass
class HeadOutput:
    """Predictions for N frames (the batch's frames flattened, frame-major within a clip).

    `aux` holds (class logits, mask logits) of the learnable queries and of every decoder layer
    but the last, for deep supervision."""

    logits: Tensor  # [N, Q, K + 1], the last class is "no object"
    masks: Tensor  # [N, Q, H / 4, W / 4] mask logits
    embeds: Tensor  # [N, Q, E] ReID embeddings
    aux: list[tuple[Tensor, Tensor]]


def head_config(num_classes: int, **overrides) -> Mask2FormerConfig:
    """A Mask2Former config for the head; its defaults are the original recipe (100 queries, width
    256, 6 deformable encoder layers, 9 decoder layers, loss weights 2 / 5 / 5, 12,544 points).

    Dropout stays 0: transformers' masked-attention decoder uses it as its layer-drop rate too."""
    if overrides.get("dropout", 0.0) != 0.0:
        raise ValueError("dropout must be 0: transformers' Mask2Former decoder also uses it as layer-drop")
    config = Mask2FormerConfig(num_labels=num_classes, **overrides)
    if config.feature_size % 32 or config.mask_feature_size % 32:
        raise ValueError(f"feature_size and mask_feature_size must be multiples of 32 (GroupNorm(32)), got {config.feature_size}")
    return config


class MLP(nn.Sequential):
    """Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < num_layers - 1 else [])
        super().__init__(*layers)


class CTVISHead(Mask2FormerPreTrainedModel):
    """res2..res5 maps of each frame -> class logits, mask logits and ReID embeddings per query."""

    def __init__(self, config: Mask2FormerConfig, in_channels: int, reid_dim: int = 256, reid_layers: int = 3) -> None:
        super().__init__(config)
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=[in_channels] * len(LEVELS))
        self.decoder = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.class_embed = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.reid_embed = MLP(config.hidden_dim, config.hidden_dim, reid_dim, reid_layers)
        self.post_init()
        for layer in self.reid_embed:  # Caffe2's xavier fill, as CTVIS initialises its ReID MLP
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=1)
                nn.init.zeros_(layer.bias)

    def forward(self, features: dict[str, Tensor]) -> HeadOutput:
        missing = [name for name in LEVELS if name not in features]
        if missing:
            raise ValueError(f"the head needs feature maps {LEVELS}, missing {missing}")
        # The pixel decoder runs in fp32, as the original's, whatever the autocast outside.
        with torch.autocast(features["res2"].device.type, enabled=False):
            pixels = self.pixel_decoder([features[name].float() for name in LEVELS])
        decoded = self.decoder(list(pixels.multi_scale_features), pixels.mask_features)
        states = [state.transpose(0, 1) for state in decoded.intermediate_hidden_states]  # [N, Q, C] per layer
        logits = [self.class_embed(state) for state in states]
        masks = list(decoded.masks_queries_logits)
        return HeadOutput(
            logits=logits[-1],
            masks=masks[-1],
            embeds=self.reid_embed(states[-1]),
            aux=list(zip(logits[:-1], masks[:-1], strict=True)),
        )
