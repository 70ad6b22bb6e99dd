"""Collectives the distillation loss needs across data-parallel processes (`torch.distributed`).

- `gather_rows`: every process's token rows, concatenated in rank order, with a gradient back to this
  process's own rows. CKA is a ratio over the rows of a batch, so per-process CKA averaged by DDP is not
  the CKA of the global batch; computing it on the gathered rows is (`--cka_scope global`).
- `average_gradients`: hooks that average a module's gradients over the processes after each backward,
  for trainable modules that live outside the DDP-wrapped student (the `mse_proj` projections).

Both are no-ops in a single process. They work with any backend (gloo on CPUs, NCCL on GPUs): only
`all_gather` and `all_reduce` are used.

- `whole_models`: a context in which models load whole on every process, even when DeepSpeed ZeRO-3
  (or FSDP's rank-0-only loading) is configured. The teacher is replicated, never sharded: it is frozen
  and small next to the optimiser state ZeRO saves on the student, and a whole copy per process avoids
  an all-gather per teacher layer per step. The student is built from it there too, and is partitioned
  by DeepSpeed / FSDP when the Trainer wraps it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherRows(torch.autograd.Function):
    """All processes' `(n_r, d)` rows as one `(Σ n_r, d)` tensor; row counts may differ per process.

    Backward: every process holds the same global loss, so the gradient of the total (the sum over
    processes, which DDP then averages) with respect to this process's rows is the sum over processes
    of their gradients for those rows: an all-reduce of the gathered gradient, then this process's slice.
    With DDP's averaging of parameter gradients the result equals one process's gradient on the
    concatenated batch.
    """

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        size = world_size()
        count = torch.tensor([rows.shape[0]], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(size)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        longest = max(counts)
        padded = rows.new_zeros(longest, rows.shape[1])
        padded[: rows.shape[0]] = rows  # all_gather needs one shape on every process
        gathered = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(gathered, padded.contiguous())
        ctx.counts, ctx.rank = counts, dist.get_rank()
        return torch.cat([g[:c] for g, c in zip(gathered, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_rows(rows: Tensor) -> Tensor:
    """`(n, d)` rows of this process -> `(N, d)` rows of all processes in rank order (N = Σ n).

    Differentiable when `rows` requires a gradient (see `_GatherRows`); the rows themselves unchanged
    in a single process.
    """
    if world_size() == 1:
        return rows
    if rows.requires_grad:
        return _GatherRows.apply(rows)
    with torch.no_grad():
        return _GatherRows.apply(rows)


def average_gradients(module: nn.Module) -> list:
    """Average `module`'s parameter gradients over the processes after each backward (as DDP does for
    the model it wraps). Returns the hook handles; nothing is registered in a single process."""
    size = world_size()
    if size == 1:
        return []

    def average(param: Tensor) -> None:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)  # gloo has no AVG
        param.grad.div_(size)

    return [p.register_post_accumulate_grad_hook(average) for p in module.parameters() if p.requires_grad]


@contextmanager
def whole_models() -> Iterator[None]:
    """Models loaded or built inside are whole on every process: full tensors, nothing partitioned.

    Once `TrainingArguments` name a ZeRO-3 DeepSpeed config (`--deepspeed`, or `accelerate launch` with
    one), transformers' `from_pretrained` and `from_config` build every model under `deepspeed.zero.Init`,
    which leaves each process a shard of every parameter (empty tensors outside a DeepSpeed engine). The
    teacher never enters an engine, and the student is cut from the teacher's weights, so both must load
    whole: transformers decides through a module-level reference to the live `HfDeepSpeedConfig`, unset
    here (`unset_hf_deepspeed_config`) and restored on exit (`set_hf_deepspeed_config`). FSDP's
    `cpu_ram_efficient_loading` leaves missing weights uninitialised on all but the first process (they
    are meant to come from it when FSDP wraps the model, which never happens to the teacher), so it is
    switched off here too. Outside ZeRO-3 and FSDP this changes nothing.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    # transformers offers set/unset but no getter for the live config; the reference is a weakref.
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    ram_efficient = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    hf_deepspeed.unset_hf_deepspeed_config()
    if ram_efficient is not None:
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)
        if ram_efficient is not None:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = ram_efficient
