"""MAT: shapes, memory compression paths, attention masks, loss, schedule and parameter counts
(as the original MAT builds and trains them)."""

import math

import pytest
import torch

from streamformer_oad.model import (
    MAT,
    KnnMultiheadAttention,
    MATConfig,
    causal_mask,
    detection_loss_weights,
    init_weights,
    mat_loss,
    mce_loss,
    warmup_cosine,
)

# 64 long-memory samples in 8 groups of 8: 8 memory tokens grouped, 16 (enc_queries) un-grouped.
TINY = dict(
    visual_size=12,
    motion_size=None,
    d_model=16,
    num_heads=2,
    dim_feedforward=24,
    long_memory_num_samples=64,
    work_memory_length=6,
    anticipation_length=2,
    future_length=10,
    groups=8,
    enc_queries=16,
    gen_queries=6,
    num_classes=5,
)


def tiny_model(**overrides) -> MAT:
    torch.manual_seed(0)
    return MAT(MATConfig(**{**TINY, **overrides})).eval()


def inputs(config: MATConfig, batch: int, padded: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Random features and a memory mask with padded[i] leading positions masked in sample i."""
    rows = config.long_memory_num_samples + config.work_memory_length
    visual = torch.randn(batch, rows, config.visual_size)
    motion = torch.randn(batch, rows, config.motion_size) if config.two_stream else None
    mask = torch.zeros(batch, config.long_memory_num_samples, dtype=torch.bool)
    for i, count in enumerate(padded):
        mask[i, :count] = True
    return visual, motion, mask


def memory_lengths(model: MAT, *args, **kwargs) -> list[int]:
    """Number of compressed memory tokens of each compression the forward ran."""
    lengths = []
    handle = model.enc_modules[1].register_forward_hook(lambda module, args, output: lengths.append(output.shape[1]))
    model(*args, **kwargs)
    handle.remove()
    return lengths


@pytest.mark.parametrize("motion_size", [None, 7])
def test_output_shapes(motion_size):
    model = tiny_model(motion_size=motion_size)
    config = model.config
    output = model(*inputs(config, batch=3, padded=(0, 64 - 1, 10)))
    assert [s.shape for s in output.work_scores] == [(3, 6 + 2, 5)] * 3
    assert [s.shape for s in output.future_scores] == [(3, 10, 5)] * 2
    assert all(torch.isfinite(s).all() for s in output.work_scores + output.future_scores)


def test_memory_is_grouped_only_with_fewer_padded_positions_than_groups_in_the_batch():
    model = tiny_model()
    config = model.config
    assert memory_lengths(model, *inputs(config, 2, padded=(7, 0))) == [8]  # 7 < groups: one token per group
    assert memory_lengths(model, *inputs(config, 2, padded=(4, 4))) == [16]  # 8 in the batch: enc_queries tokens
    # Per sample, each of those two samples has 4 < 8 padded positions.
    assert memory_lengths(model, *inputs(config, 2, padded=(4, 4)), grouping="sample") == [8]
    # A mixed batch runs as two batches, one per path.
    assert sorted(memory_lengths(model, *inputs(config, 3, padded=(0, 30, 2)), grouping="sample")) == [8, 16]
    assert memory_lengths(tiny_model(groups=0), *inputs(config, 1)) == [16]


def test_per_sample_grouping_makes_each_sample_independent_of_its_batch():
    model = tiny_model()
    visual, motion, mask = inputs(model.config, 3, padded=(0, 30, 2))
    batched = model(visual, motion, mask, grouping="sample").work_scores[-1]
    alone = torch.cat([model(visual[i : i + 1], None, mask[i : i + 1]).work_scores[-1] for i in range(3)])
    torch.testing.assert_close(batched, alone)
    # The original per-batch rule sends the whole batch down the un-grouped path (32 padded >= 8):
    # the unpadded sample's scores change with its batch mates.
    per_batch = model(visual, motion, mask).work_scores[-1]
    assert not torch.allclose(per_batch[0], alone[0])


def test_causal_mask():
    inf = float("-inf")
    assert causal_mask(3).tolist() == [[0, inf, inf], [0, 0, inf], [0, 0, 0]]


def attention_weights(num_keys: int, attn_mask: torch.Tensor | None = None, knn: bool = True) -> torch.Tensor:
    """[Lq, Lk] attention weights of one head: one-hot values through identity value/output projections."""
    torch.manual_seed(0)
    attention = KnnMultiheadAttention(num_keys, num_heads=1, knn=knn)
    with torch.no_grad():
        attention.in_proj_weight[2 * num_keys :] = torch.eye(num_keys)
        attention.out_proj.weight.copy_(torch.eye(num_keys))
    x = torch.randn(1, num_keys, num_keys)
    return attention(x, x, torch.eye(num_keys)[None], attn_mask=attn_mask)[0].detach()


@pytest.mark.parametrize(("num_keys", "kept"), [(4, 3), (32, 24), (256, 192)])
def test_knn_keeps_the_top_three_quarters_of_the_keys(num_keys, kept):
    weights = attention_weights(num_keys)
    assert ((weights > 0).sum(dim=-1) == kept).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(num_keys))
    assert ((attention_weights(num_keys, knn=False) > 0).sum(dim=-1) == num_keys).all()


def test_knn_after_the_causal_mask_keeps_the_visible_keys_of_short_rows():
    weights = attention_weights(4, causal_mask(4))
    # Row i sees i + 1 keys; the top 3 of 4 keep them all except in the last row.
    assert (weights > 0).sum(dim=-1).tolist() == [1, 2, 3, 3]
    assert (weights.triu(1) == 0).all()


def test_mce_of_uniform_logits_is_log_of_the_counted_classes():
    target = torch.zeros(4, 22)
    target[torch.arange(4), torch.tensor([0, 3, 20, 7])] = 1
    assert mce_loss(torch.zeros(4, 22), target, ignore_index=21).item() == pytest.approx(math.log(21), abs=1e-5)
    assert math.log(21) == pytest.approx(3.04452, abs=1e-5)
    tvseries = torch.zeros(4, 31)
    tvseries[:, 5] = 1
    assert mce_loss(torch.zeros(4, 31), tvseries, ignore_index=-100).item() == pytest.approx(3.43399, abs=1e-5)


def test_mce_leaves_out_ambiguous_rows_and_never_trains_the_ambiguous_logit():
    torch.manual_seed(0)
    target = torch.zeros(6, 22)
    target[:4, 1] = 1
    target[4:, 21] = 1  # ambiguous
    logits = torch.randn(6, 22, requires_grad=True)
    loss = mce_loss(logits, target, ignore_index=21)
    assert loss.item() == pytest.approx(mce_loss(logits[:4], target[:4], ignore_index=21).item())
    loss.backward()
    assert (logits.grad[4:] == 0).all() and (logits.grad[:, 21] == 0).all()
    # Only ambiguous rows: nothing to learn (the original's mean over no rows is NaN).
    assert mce_loss(logits[4:], target[4:], ignore_index=21).item() == 0


def test_mat_loss_weights():
    assert detection_loss_weights(3) == pytest.approx([0.2, 0.2, 1.0])
    model = tiny_model()
    config = model.config
    output = model(*inputs(config, 2))
    target = torch.eye(5)[torch.randint(5, (2, config.work_tokens))]
    future = torch.eye(5)[torch.randint(5, (2, config.future_length))]
    losses = mat_loss(output, target, future, ignore_index=4)
    det = [mce_loss(s, target, 4) for s in output.work_scores]
    fut = [mce_loss(s, future, 4) for s in output.future_scores]
    torch.testing.assert_close(losses["det_loss"], 0.2 * det[0] + 0.2 * det[1] + 1.0 * det[2])
    torch.testing.assert_close(losses["fut_loss"], 0.1 * fut[0] + 0.1 * fut[1])
    torch.testing.assert_close(losses["loss"], losses["det_loss"] + losses["fut_loss"])


def test_gradient_reaches_every_parameter_but_the_ambiguous_logit():
    model = tiny_model().train()
    config = model.config
    visual, motion, mask = inputs(config, 2, padded=(3, 0))
    target = torch.eye(5)[torch.randint(4, (2, config.work_tokens))]
    future = torch.eye(5)[torch.randint(4, (2, config.future_length))]
    mat_loss(model(visual, motion, mask), target, future, ignore_index=4)["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # The classifier row of the ignored (ambiguous) class never gets a gradient.
    assert (model.classifier.weight.grad[4] == 0).all() and model.classifier.bias.grad[4] == 0


def test_warmup_cosine_schedule():
    base, per_epoch = 7e-5, 100
    warmup, total = 10 * per_epoch, 25 * per_epoch
    expected = {0: 2.1e-5, 500: 4.1155e-5, 1000: 4.5816e-5, 1250: 3.5e-5}
    for iteration, lr in expected.items():
        assert base * warmup_cosine(iteration, warmup, total) == pytest.approx(lr, abs=5e-10)
    # Warm-up and cosine overlap: the peak (it 873) is 0.663 x base, never base.
    assert max(warmup_cosine(i, warmup, total) for i in range(total)) == pytest.approx(0.6634, abs=1e-4)
    # As a LambdaLR stepped per iteration.
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: warmup_cosine(i, warmup, total))
    for _ in range(500):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4.1155e-5, abs=5e-10)


@pytest.mark.parametrize(
    ("overrides", "count"),
    [
        (dict(motion_size=None), 98_334_742),  # THUMOS without flow
        (dict(), 104_638_486),  # THUMOS with flow (the default config)
        (dict(motion_size=None, num_classes=31), 98_343_967),  # TVSeries
    ],
)
def test_parameter_counts_of_the_released_configs(overrides, count):
    with torch.device("meta"):
        model = MAT(MATConfig(**overrides))
    assert sum(p.numel() for p in model.parameters()) == count


def test_init_after_building_on_the_meta_device():
    with torch.device("meta"):
        model = MAT(MATConfig(**TINY))
    model.to_empty(device="cpu").apply(init_weights)
    torch.testing.assert_close(model.pos_encoding.pe, tiny_model().pos_encoding.pe)
    attention = model.dec_modules.layers[0].self_attn
    assert (attention.in_proj_bias == 0).all() and (attention.out_proj.bias == 0).all()
    assert (model.dec_modules.norm.weight == 1).all()
    assert model.final_query.weight.std().item() == pytest.approx(1.0, abs=0.2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(groups=7), "not divisible by groups"),
        (dict(long_memory_num_samples=32), "need long_memory_num_samples >= groups"),
        (dict(future_length=1), "anticipation queries are the first rows"),
        (dict(cci_times=1), "cci_times must be >= 2"),
        (dict(d_model=15), "divisible by num_heads"),
        (dict(gen_queries=1), "single key"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        MATConfig(**{**TINY, **overrides})


def test_forward_rejects_inconsistent_inputs():
    model = tiny_model()
    visual, _, mask = inputs(model.config, 2)
    with pytest.raises(ValueError, match="takes no motion"):
        model(visual, visual, mask)
    mask[1] = True
    with pytest.raises(ValueError, match="keep at least one visible"):
        model(visual, None, mask)
