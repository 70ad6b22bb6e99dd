"""Global CKA across data-parallel processes, and gradient averaging for modules outside DDP (gloo, CPU)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ckadistill.distributed import average_gradients, gather_rows
from ckadistill.losses import linear_cka

SHARDS = (7, 5)  # rows per process: unequal on purpose (real-token counts differ between batches)


def data():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(sum(SHARDS), 6, generator=g)
    teacher = inputs @ torch.randn(6, 10, generator=g) + 0.5 * torch.randn(sum(SHARDS), 10, generator=g)
    return inputs, teacher


def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))


def projection_module() -> torch.nn.Module:
    torch.manual_seed(2)
    return torch.nn.Linear(6, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out: str, task: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=len(SHARDS))
    try:
        start = sum(SHARDS[:rank])
        rows = slice(start, start + SHARDS[rank])
        inputs, teacher = data()
        if task == "cka":
            net = torch.nn.parallel.DistributedDataParallel(model())
            loss = 1.0 - linear_cka(gather_rows(net(inputs[rows])), gather_rows(teacher[rows]))
            loss.backward()
            grads = [p.grad for p in net.module.parameters()]
            torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/rank{rank}.pt")
        else:  # a module outside DDP, its gradients averaged by hooks
            projection = projection_module()
            handles = average_gradients(projection)
            for _ in range(2):  # twice: accumulation keeps the average
                torch.nn.functional.mse_loss(projection(inputs[rows]), teacher[rows]).backward()
            torch.save({"grads": [p.grad for p in projection.parameters()], "hooks": len(handles)},
                       f"{out}/rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def run_two(task: str, tmp_path) -> list[dict]:
    mp.start_processes(worker, args=(free_port(), str(tmp_path), task), nprocs=2, start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_two_process_global_cka_equals_one_process_cka_on_the_whole_batch(tmp_path):
    results = run_two("cka", tmp_path)
    inputs, teacher = data()
    net = model()
    loss = 1.0 - linear_cka(net(inputs), teacher)
    loss.backward()
    for result in results:  # the same loss on both ranks, and DDP's averaged gradient = the whole batch's
        assert result["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
        for got, want in zip(result["grads"], [p.grad for p in net.parameters()], strict=True):
            assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_gradients_of_a_module_outside_ddp_are_averaged_over_processes(tmp_path):
    results = run_two("projection", tmp_path)
    assert [r["hooks"] for r in results] == [2, 2]
    inputs, teacher = data()
    per_rank = []
    for rank in range(2):
        projection = projection_module()
        start = sum(SHARDS[:rank])
        rows = slice(start, start + SHARDS[rank])
        for _ in range(2):
            torch.nn.functional.mse_loss(projection(inputs[rows]), teacher[rows]).backward()
        per_rank.append([p.grad for p in projection.parameters()])
    for index in range(2):
        want = (per_rank[0][index] + per_rank[1][index]) / 2
        for result in results:
            assert torch.allclose(result["grads"][index], want, atol=1e-6)


def test_single_process_is_a_no_op():
    rows = torch.randn(4, 3, requires_grad=True)
    assert gather_rows(rows) is rows
    assert average_gradients(torch.nn.Linear(2, 2)) == []
