"""Retrieval negatives gathered across 2 CPU processes (gloo) == the single-process loss."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamformer_pretrain.heads import TaskLogits, gather_across_ranks, retrieval_loss

WORLD, LOCAL_BATCH, DIM = 2, 3, 8


def _setup():
    torch.manual_seed(0)
    text_tower = torch.nn.Linear(DIM, DIM)
    logits = TaskLogits(scale=1.5, bias=-1.0)
    g = torch.Generator().manual_seed(1)
    videos = torch.randn(WORLD * LOCAL_BATCH, DIM, generator=g)
    captions = torch.randn(WORLD * LOCAL_BATCH, DIM, generator=g)
    return text_tower, logits, videos, captions


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    text_tower, logits, videos, captions = _setup()
    local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    text = gather_across_ranks(text_tower(captions[local]), with_grad=True)
    loss = retrieval_loss(logits, videos[local], text, rank=rank)
    loss.backward()
    grad = text_tower.weight.grad.clone()
    dist.all_reduce(grad)  # what DDP does to gradients: average over ranks
    losses = [torch.zeros(()) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    # Gathered without gradients (RVOS's expressions), the local rows still carry theirs.
    x = torch.randn(LOCAL_BATCH, DIM, requires_grad=True)
    gather_across_ranks(x, with_grad=False).sum().backward()
    results[rank] = (torch.stack(losses).mean(), grad / WORLD, torch.equal(x.grad, torch.ones_like(x)))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_retrieval_loss_equals_single_process():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)

    text_tower, logits, videos, captions = _setup()
    single = retrieval_loss(logits, videos, text_tower(captions))
    single.backward()
    for rank in range(WORLD):
        ddp_loss, ddp_grad, local_rows_keep_grad = results[rank]
        torch.testing.assert_close(ddp_loss, single.detach())
        torch.testing.assert_close(ddp_grad, text_tower.weight.grad)
        assert local_rows_keep_grad
