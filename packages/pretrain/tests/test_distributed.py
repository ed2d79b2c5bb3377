"""Retrieval negatives gathered across 2 CPU processes (gloo): with equal batches the loss and the
gradients equal the single-process ones on the global batch; with unequal batches (samples lost
to broken files) every rank still scores its videos against all captions, its own at the right
offset."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamformer_pretrain.heads import TaskLogits, gather_across_ranks, retrieval_loss

DIM = 8


def _setup(total: int):
    torch.manual_seed(0)
    text_tower = torch.nn.Linear(DIM, DIM)
    logits = TaskLogits(scale=1.5, bias=-1.0)
    g = torch.Generator().manual_seed(1)
    return text_tower, logits, torch.randn(total, DIM, generator=g), torch.randn(total, DIM, generator=g)


def _worker(rank: int, port: int, sizes: list[int], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(sizes))
    text_tower, logits, videos, captions = _setup(sum(sizes))
    start = sum(sizes[:rank])
    local = slice(start, start + sizes[rank])
    text, offset = gather_across_ranks(text_tower(captions[local]), with_grad=True)
    loss = retrieval_loss(logits, videos[local], text, offset)
    loss.backward()
    grad = text_tower.weight.grad.clone()
    dist.all_reduce(grad)  # what DDP does to gradients: average over ranks
    # Gathered without gradients (RVOS's expressions), the local rows still carry theirs.
    x = torch.randn(sizes[rank], DIM, requires_grad=True)
    gathered, _ = gather_across_ranks(x, with_grad=False)
    gathered.sum().backward()
    results[rank] = (offset, loss.detach(), grad / len(sizes), len(gathered), torch.equal(x.grad, torch.ones_like(x)))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sizes", [[3, 3], [3, 2]], ids=["equal", "unequal"])
def test_gathered_retrieval_loss_equals_single_process(sizes):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), sizes, results), nprocs=len(sizes), join=True)

    text_tower, logits, videos, captions = _setup(sum(sizes))
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    # Each rank's loss is its videos against every caption, computed here in one process.
    per_rank = [retrieval_loss(logits, videos[s : s + n], text_tower(captions), s) for s, n in zip(starts, sizes, strict=True)]
    torch.stack(per_rank).mean().backward()
    for rank, start in enumerate(starts):
        offset, loss, grad, gathered, local_rows_keep_grad = results[rank]
        assert offset == start and gathered == sum(sizes) and local_rows_keep_grad
        torch.testing.assert_close(loss, per_rank[rank].detach())
        torch.testing.assert_close(grad, text_tower.weight.grad)
    if sizes[0] == sizes[1]:  # and then the mean over ranks is the global batch's loss
        torch.testing.assert_close(torch.stack(per_rank).mean(), retrieval_loss(logits, videos, text_tower(captions)))
