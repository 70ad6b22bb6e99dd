"""Wall time of a distillation with and without the teacher-output cache, side by side.

Classification (default): the same student (2 layers × 128 from the quickstart's MiniLM teacher, random
init so no PCA pass is timed), the same BBC News rows and steps, CE + KL + Σ(1 − CKA); only
`--cache_teacher` differs. Needs the cached quickstart teacher (run `make run` once first).

`--task summarization`: the headline job's student (2+2 × 128, random init) from its bert2bert teacher,
0.2·CE + 0.8·KL + Σ(1 − CKA) over both stacks, on the first --rows training articles; the cache then
holds token logits and decoder states per target position. Needs the cached headline teacher (run
`ckadistill quickstart --task summarization` once first).

    python benchmarks/bench_teacher_cache.py [--rows 512] [--epochs 3] [--max_length 128]
    python benchmarks/bench_teacher_cache.py --task summarization [--rows 512] [--epochs 3]
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
from ckadistill.quickstart import DATA_SEED, QuickstartArguments, default_cache_dir
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


def distil_headlines(teacher: Path, splits: dict, out: Path, *, cache: bool, args) -> tuple[float, float]:
    from dataclasses import replace

    from ckadistill.quickstart_headlines import HeadlineQuickstartArguments, distil_student

    run = replace(
        HeadlineQuickstartArguments(),
        student_init="random",
        max_train_samples=args.rows,
        student_epochs=args.epochs,
    )
    start = time.perf_counter()
    metrics = distil_student(run, splits, teacher, out, cache_teacher=cache)
    return time.perf_counter() - start, metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max_length", type=int, default=128, help="Classification tokens per row.")
    parser.add_argument("--task", choices=["classification", "summarization"], default="classification")
    args = parser.parse_args()
    if args.task == "summarization":
        from ckadistill.bbc import write_headline_splits
        from ckadistill.quickstart_headlines import HeadlineQuickstartArguments

        headline = HeadlineQuickstartArguments()
        teacher = default_cache_dir() / f"bbc-headlines-bert2bert-teacher-{headline.teacher_key()}"
        job, run = "ckadistill quickstart --task summarization", distil_headlines
        shape = (
            f"{headline.max_source_length}+{headline.max_target_length} tokens, batch 16, 2+2 × 128 student"
        )
    else:
        teacher = default_cache_dir() / f"bbc-minilm-teacher-{QuickstartArguments().teacher_key()}"
        job, run = "make run (ckadistill quickstart)", distil
        shape = f"{args.max_length} tokens, batch 16, 2L×128 student"
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"no cached teacher at {teacher}: run `{job}` first")
    with tempfile.TemporaryDirectory() as tmp:
        if args.task == "summarization":
            data = write_headline_splits(Path(tmp) / "data", lead_lines=headline.lead_lines, seed=DATA_SEED)
        else:
            data = write_splits(Path(tmp) / "data")["train"]
        live_total, live_train = run(teacher, data, Path(tmp) / "live", cache=False, args=args)
        cached_total, cached_train = run(teacher, data, Path(tmp) / "cached", cache=True, args=args)
    print(f"\n{args.task}: {args.rows} rows × {args.epochs:g} epochs, {shape}")
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
