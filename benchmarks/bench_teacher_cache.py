"""Wall time of a distillation with and without the teacher-output cache, side by side.

The same student (2 layers × 128 from the quickstart's MiniLM teacher, random init so no PCA pass is
timed), the same BBC News rows and steps, CE + KL + Σ(1 − CKA); only `--cache_teacher` differs.
Needs the cached quickstart teacher (run `make run` once first).

    python benchmarks/bench_teacher_cache.py [--rows 512] [--epochs 3] [--max_length 128]
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from ckadistill.bbc import write_splits
from ckadistill.config import (
    ClassificationTrainingArguments,
    DataArguments,
    DistillArguments,
    DistillModelArguments,
)
from ckadistill.quickstart import QuickstartArguments, default_cache_dir
from ckadistill.tasks.classification import run_distill


def distil(teacher: Path, train: Path, out: Path, *, cache: bool, args) -> tuple[float, float]:
    start = time.perf_counter()
    metrics = run_distill(
        DistillModelArguments(
            teacher=str(teacher), student_layers=2, student_hidden_size=128, student_init="random"
        ),
        DataArguments(train_file=str(train), max_train_samples=args.rows, max_length=args.max_length),
        DistillArguments(cache_teacher=cache),
        ClassificationTrainingArguments(
            overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
            output_dir=str(out),
            num_train_epochs=args.epochs,
            eval_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=1000,
        ),
    )
    return time.perf_counter() - start, metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max_length", type=int, default=128)
    args = parser.parse_args()
    teacher = default_cache_dir() / f"bbc-minilm-teacher-{QuickstartArguments().teacher_key()}"
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"no cached teacher at {teacher}: run `make run` (ckadistill quickstart) first")
    with tempfile.TemporaryDirectory() as tmp:
        splits = write_splits(Path(tmp) / "data")
        live_total, live_train = distil(teacher, splits["train"], Path(tmp) / "live", cache=False, args=args)
        cached_total, cached_train = distil(
            teacher, splits["train"], Path(tmp) / "cached", cache=True, args=args
        )
    print(f"\n{args.rows} rows × {args.epochs:g} epochs, {args.max_length} tokens, batch 16, 2L×128 student")
    machine = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {machine}, {torch.get_num_threads()} threads\n"
    )
    print("| teacher outputs | whole run (s) | trainer.train (s) |")
    print("|---|---:|---:|")
    print(f"| live every step | {live_total:.1f} | {live_train:.1f} |")
    print(f"| cached once (`--cache_teacher`) | {cached_total:.1f} | {cached_train:.1f} |")
    print(f"| ratio live / cached | {live_total / cached_total:.2f}× | {live_train / cached_train:.2f}× |")


if __name__ == "__main__":
    main()
