"""Global CKA across data-parallel processes, gradient averaging for modules outside DDP (gloo, CPU), and
models loaded whole while ZeRO-3 or FSDP's rank-0 loading is configured."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ckadistill.distributed import average_gradients, gather_rows, whole_models
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


# ---- whole_models ----------------------------------------------------------------------------------


class Zero3Config:
    """Stands in for a live `HfDeepSpeedConfig` of ZeRO stage 3 (what `TrainingArguments(deepspeed=...)`
    registers), for the checks that need no DeepSpeed installed."""

    def __init__(self) -> None:
        self.config = {"zero_optimization": {"stage": 3}}

    def is_zero3(self) -> bool:
        return True


@pytest.fixture
def tiny_teacher(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def test_whole_models_loads_whole_while_transformers_believes_zero3_is_on(tiny_teacher, monkeypatch):
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    live = Zero3Config()  # held here: transformers keeps only a weak reference
    set_hf_deepspeed_config(live)
    try:
        assert is_deepspeed_zero3_enabled()
        with whole_models():
            assert not is_deepspeed_zero3_enabled()
            assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
            teacher = BertForSequenceClassification.from_pretrained(tiny_teacher)
        assert is_deepspeed_zero3_enabled()  # restored for the Trainer
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
        saved = load_file(tiny_teacher / "model.safetensors")
        for name, tensor in teacher.state_dict().items():
            if name in saved:
                assert torch.equal(tensor, saved[name]), name
    finally:
        unset_hf_deepspeed_config()


def test_whole_models_restores_the_config_when_loading_fails():
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    live = Zero3Config()
    set_hf_deepspeed_config(live)
    try:
        with pytest.raises(OSError), whole_models():
            raise OSError("no such model")
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()


def test_whole_models_changes_nothing_without_zero3_or_fsdp(monkeypatch):
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    monkeypatch.delenv("FSDP_CPU_RAM_EFFICIENT_LOADING", raising=False)
    with whole_models():
        assert not is_deepspeed_zero3_enabled()
        assert "FSDP_CPU_RAM_EFFICIENT_LOADING" not in os.environ
    assert not is_deepspeed_zero3_enabled()
    assert "FSDP_CPU_RAM_EFFICIENT_LOADING" not in os.environ


# With DeepSpeed installed, the real thing in a process of its own (zero.Init needs a process group):
# a ZeRO-3 `HfDeepSpeedConfig` makes `from_pretrained` partition the model (empty tensors outside an
# engine), and `whole_models` loads it whole beside it.
REAL_ZERO3 = """
import os, sys, torch
import torch.distributed as dist
from transformers import BertForSequenceClassification
from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled
from ckadistill.distributed import whole_models

os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo")
live = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
sharded = BertForSequenceClassification.from_pretrained(sys.argv[1])
assert all(p.numel() == 0 and hasattr(p, "ds_id") for p in sharded.parameters()), "not partitioned"
with whole_models():
    whole = BertForSequenceClassification.from_pretrained(sys.argv[1])
assert is_deepspeed_zero3_enabled()
assert not any(hasattr(p, "ds_id") for p in whole.parameters())
from safetensors.torch import load_file
saved = load_file(os.path.join(sys.argv[1], "model.safetensors"))
assert all(torch.equal(whole.state_dict()[k], v) for k, v in saved.items())
print("ok")
"""


def test_whole_models_under_a_real_deepspeed_zero3_config(tiny_teacher, tmp_path):
    pytest.importorskip("deepspeed")
    script = tmp_path / "zero3.py"
    script.write_text(REAL_ZERO3, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_teacher), str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
