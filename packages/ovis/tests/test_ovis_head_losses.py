"""The head (transformers' Mask2Former parts + class and ReID heads) and the training losses."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from streamformer_ovis.head import CTVISHead, HeadOutput, head_config
from streamformer_ovis.losses import ClipTargets, CTVISCriterion, contrastive_reid_loss, fused_embedding
from streamformer_ovis.tracker import fuse_embedding

TINY_HEAD = dict(
    feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
    decoder_layers=3, num_attention_heads=4, dim_feedforward=64, num_queries=6, train_num_points=64,
)  # fmt: skip


def features(frames: int, channels: int = 24, size: int = 64):
    g = torch.Generator().manual_seed(0)
    strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    return {name: torch.randn(frames, channels, size // s, size // s, generator=g) for name, s in strides.items()}


def test_head_shapes_and_deep_supervision():
    head = CTVISHead(head_config(3, **TINY_HEAD), in_channels=24, reid_dim=16)
    out = head(features(4))
    assert out.logits.shape == (4, 6, 4)  # 3 classes + no object
    assert out.masks.shape == (4, 6, 16, 16)  # stride 4
    assert out.embeds.shape == (4, 6, 16)
    assert len(out.aux) == 2  # the learnable queries' prediction + every decoder layer but the last
    assert torch.isfinite(head.pixel_decoder.level_embed).all()  # left uninitialised by transformers, set by post_init


def test_head_refuses_bad_configs_and_missing_levels():
    with pytest.raises(ValueError, match="layer-drop"):
        head_config(3, dropout=0.1)
    with pytest.raises(ValueError, match="multiples of 32"):
        head_config(3, feature_size=48)
    head = CTVISHead(head_config(3, **TINY_HEAD), in_channels=24, reid_dim=16)
    with pytest.raises(ValueError, match="res5"):
        head({k: v for k, v in features(1).items() if k != "res5"})


def clip(frames: int = 2, size: int = 16) -> ClipTargets:
    masks = torch.zeros(2, frames, size, size, dtype=torch.bool)
    masks[0, :, 2:8, 2:8] = True
    masks[1, 0, 10:14, 9:15] = True  # instance 1 only in the first frame
    return ClipTargets(torch.tensor([0, 2]), masks)


def test_set_loss_is_transformers_weighted():
    """Without auxiliary predictions, each term is transformers' unweighted value times its weight."""
    config = head_config(3, **TINY_HEAD)
    g = torch.Generator().manual_seed(0)
    output = HeadOutput(
        torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 8, generator=g), []
    )
    targets = [clip()]
    torch.manual_seed(1)
    ours = CTVISCriterion(config)(output, targets)
    classes = [torch.tensor([0, 2]), torch.tensor([0])]
    masks = [targets[0].masks[:, 0].float(), targets[0].masks[:1, 1].float()]
    torch.manual_seed(1)
    theirs = Mask2FormerLoss(config, weight_dict={})(output.masks, output.logits, masks, classes)
    for name, weight in (("loss_cross_entropy", 2.0), ("loss_mask", 5.0), ("loss_dice", 5.0)):
        torch.testing.assert_close(ours[name], weight * theirs[name])
    assert set(ours) == {"loss_cross_entropy", "loss_mask", "loss_dice", "loss_reid", "loss_aux_reid", "loss"}
    torch.testing.assert_close(ours["loss"], sum(v for k, v in ours.items() if k != "loss"))


def test_losses_cover_aux_layers_and_empty_frames_and_train_the_head():
    torch.manual_seed(0)
    head = CTVISHead(head_config(3, **TINY_HEAD), in_channels=24, reid_dim=16)
    criterion = CTVISCriterion(head.config)
    empty = ClipTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 64, 64, dtype=torch.bool))
    big = clip(size=64)
    feats = features(4)
    losses = criterion(head(feats), [big, empty])
    assert {"loss_mask_0", "loss_dice_1", "loss_cross_entropy_1"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = criterion(head(feats), [big, empty])["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.6 * first


def test_criterion_checks_frames():
    criterion = CTVISCriterion(head_config(3, **TINY_HEAD))
    output = HeadOutput(torch.zeros(3, 6, 4), torch.zeros(3, 6, 4, 4), torch.zeros(3, 6, 8), [])
    with pytest.raises(ValueError, match="do not match 3 predicted frames"):
        criterion(output, [clip()])


def test_contrastive_reid_loss_by_hand():
    """One instance matched to query 0 in frame 0 and query 1 in frame 1; 3 queries. The anchor
    (frame 1, query 1) has the positive (frame 0, query 0) and the negatives frame 0's queries 1, 2."""
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [[0.2, 0.1], [0.9, 0.3], [-1.0, 0.0]]])
    indices = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([1]), torch.tensor([0]))]
    ids = [torch.tensor([0]), torch.tensor([0])]
    reid, aux = contrastive_reid_loss(e, indices, ids, frames=2, momentum_embed=False)
    anchor, positive, negatives = e[1, 1], e[0, 0], e[0, 1:]
    s_pos, s_neg = anchor @ positive, negatives @ anchor
    expected = math.log(1 + torch.exp(s_neg - s_pos).sum().item())
    assert reid.item() == pytest.approx(expected, rel=1e-6)
    cos = F.cosine_similarity(torch.cat([positive[None], negatives]), anchor[None])
    assert aux.item() == pytest.approx(((cos - torch.tensor([1.0, 0.0, 0.0])) ** 2).mean().item(), rel=1e-6)


def test_contrastive_reid_loss_without_items_is_zero_with_a_graph():
    e = torch.randn(2, 3, 4, requires_grad=True)
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    reid, aux = contrastive_reid_loss(e, [empty, empty], [torch.zeros(0, dtype=torch.long)] * 2, frames=2)
    assert reid.item() == 0 and aux.item() == 0
    reid.backward()  # DDP needs every parameter in the graph
    assert e.grad is not None


def test_fused_embedding_follows_the_tracker_rule():
    history = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    step = fuse_embedding(history[0], history[:1], history[1])
    torch.testing.assert_close(fused_embedding(history), fuse_embedding(step, history[:2], history[2]))
