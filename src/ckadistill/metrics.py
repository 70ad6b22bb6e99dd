"""Model size and speed measurements shared by every task (task metrics live in `ckadistill.tasks`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------------------------------
# Size and speed.
# ---------------------------------------------------------------------------------------------------


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters, tied weights counted once.

    Whole sizes also for a model that DeepSpeed ZeRO-3 has partitioned (each process holds an empty
    placeholder and a shard; `ds_numel` is the whole size) or FSDP2 has sharded (a DTensor's `numel` is
    already the whole size).
    """
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(getattr(p, "ds_numel", None) or p.numel() for p in unique)


def measure_throughput(
    model: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    warmup: int = 2,
) -> float:
    """Examples per second of `model(**batch)` over pre-collated batches, in inference mode.

    The first `warmup` batches run once untimed (allocator and kernel warm-up); then every batch is
    timed, so the rate covers exactly the examples in `batches`. Collation is outside the timing.
    """
    import torch

    if not batches:
        raise ValueError("measure_throughput needs at least one batch")
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    examples = sum(len(batch["input_ids"]) for batch in batches)
    model.eval()
    with torch.inference_mode():
        for batch in batches[:warmup]:
            model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    return examples / max(elapsed, 1e-9)
