"""Length-grouped batches for encoder-decoder distillation: random batches against `group_by_length`.

Short sentences batched at random are padded to the longest one in their batch, and every padded
position still costs the teacher's forward and the student's forward and backward. The Trainer's
`--train_sampling_strategy group_by_length` (transformers' `LengthGroupedSampler`: shuffled
mega-batches of 50 batches, each sorted by source length) batches sentences of similar length together.
This script measures both on real data, side by side in one run, through `ckadistill distill`'s own
entry point:

- **real-token share**: real source and target tokens over padded positions, over one epoch of
  batches as each sampler draws them (no model involved);
- **seconds per step**: `--steps` distillation steps of the same student (by default 50: one whole
  mega-batch, whose batches the grouped sampler yields longest first), the two strategies taking turns
  for `--rounds` rounds (so drift in the machine's load hits both), the Trainer's own `train_runtime`
  over the steps.

Defaults read what `translation_bbc.py` leaves in its output folder (its data and its teacher), with its
student (2+2 × 96, `pca`, the paper's loss with CKA) and batch (64):

    python benchmarks/translation_bbc.py --teacher_only                  # once, if not there yet
    python benchmarks/bench_grouping.py
    python benchmarks/bench_grouping.py --teacher DIR --train_file F.jsonl --source_column en --target_column pt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
)
from machine import machine_line

STRATEGIES = ("random", "group_by_length")
TRANSLATION_RUN = Path("outputs/bench-translation")


def token_lengths(tokenizer, rows: list[dict], args) -> tuple[list[int], list[int]]:
    """Source and target token counts of every training pair, truncated as training truncates them."""
    sources = tokenizer([r[args.source_column] for r in rows], truncation=True, max_length=args.max_length)
    targets = tokenizer(
        text_target=[r[args.target_column] for r in rows], truncation=True, max_length=args.max_length
    )
    return [len(ids) for ids in sources["input_ids"]], [len(ids) for ids in targets["input_ids"]]


def real_token_share(
    source_lengths: list[int], target_lengths: list[int], batch_size: int, strategy: str
) -> tuple[float, float]:
    """(source, target) real tokens over padded positions across one epoch of `strategy`'s batches."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(0)
    if strategy == "random":
        order = torch.randperm(len(source_lengths), generator=generator).tolist()
    else:  # what LengthGroupedSampler yields: grouped by the source (the first model input)
        order = get_length_grouped_indices(source_lengths, batch_size, generator=generator)
    shares = []
    for lengths in (source_lengths, target_lengths):
        real = padded = 0
        for i in range(0, len(order), batch_size):
            batch = [lengths[j] for j in order[i : i + batch_size]]
            real, padded = real + sum(batch), padded + max(batch) * len(batch)
        shares.append(real / padded)
    return shares[0], shares[1]


def timed_steps(args, strategy: str, output_dir: str) -> float:
    """Seconds per step of `args.steps` distillation steps under `strategy` (the Trainer's runtime)."""
    from ckadistill.tasks.seq2seq import run_distill

    metrics = run_distill(
        DistillModelArguments(
            teacher=args.teacher,
            student_encoder_layers=args.student_layers,
            student_decoder_layers=args.student_layers,
            student_hidden_size=args.student_width,
            student_heads=max(1, args.student_width // 32),
            student_init="pca",
        ),
        DataArguments(
            task="translation",
            train_file=args.train_file,
            source_column=args.source_column,
            target_column=args.target_column,
            max_source_length=args.max_length,
            max_target_length=args.max_length,
            validation_split_fraction=0.0,  # train only: nothing is scored
            test_split_fraction=0.0,
        ),
        DistillArguments.seq2seq_paper("cka"),
        TaskTrainingArguments(
            overwrite_output_dir=True,  # a scratch folder per run
            output_dir=output_dir,
            max_steps=args.steps,
            learning_rate=1e-3,
            per_device_train_batch_size=args.batch_size,
            train_sampling_strategy=strategy,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=args.steps,
            disable_tqdm=True,
            seed=0,
        ),
        GenerationArguments(num_beams=1),
    )
    return metrics["train_runtime"] / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    teacher = TRANSLATION_RUN / "teacher-mbart-3x256-v8000-e6"
    parser.add_argument("--teacher", default=str(teacher), help="Encoder-decoder teacher folder.")
    parser.add_argument("--train_file", default=str(TRANSLATION_RUN / "data" / "train.jsonl"))
    parser.add_argument("--source_column", default="en")
    parser.add_argument("--target_column", default="pt")
    parser.add_argument("--max_length", type=int, default=64, help="Tokens per side at most.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--student_layers", type=int, default=2, help="Encoder and decoder layers.")
    parser.add_argument("--student_width", type=int, default=96)
    parser.add_argument(
        "--steps",
        type=int,
        default=50,
        # LengthGroupedSampler sorts each mega-batch of 50 batches longest first: fewer steps would time
        # only its longer batches.
        help="Timed steps per run (default: one whole mega-batch of the grouped sampler).",
    )
    parser.add_argument("--rounds", type=int, default=2, help="Runs per strategy, taking turns.")
    args = parser.parse_args()
    for flag, path in (
        ("--teacher", Path(args.teacher) / "config.json"),
        ("--train_file", Path(args.train_file)),
    ):
        if not path.is_file():
            parser.error(
                f"{flag}: {path} does not exist (run translation_bbc.py --teacher_only, or pass {flag})"
            )

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    with open(args.train_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    lengths = token_lengths(tokenizer, rows, args)  # once: the shares of both strategies read them
    shares = {s: real_token_share(*lengths, args.batch_size, s) for s in STRATEGIES}

    seconds: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for strategy in STRATEGIES:
                seconds[strategy].append(timed_steps(args, strategy, f"{scratch}/{strategy}-{round_}"))
                print(f"round {round_ + 1}, {strategy}: {seconds[strategy][-1]:.2f} s per step", flush=True)

    base = statistics.median(seconds["random"])
    print()
    print(
        f"{len(rows):,} training pairs of {args.train_file}; batch {args.batch_size}; student "
        f"{args.student_layers}+{args.student_layers} × {args.student_width} (pca, CE + KL + CKA); "
        f"{args.steps} steps × {args.rounds} rounds per strategy; {(time.perf_counter() - start) / 60:.1f} min"
    )
    print(machine_line())
    print()
    print("| sampling | real source tokens | real target tokens | s per step (median) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for strategy in STRATEGIES:
        median = statistics.median(seconds[strategy])
        source, target = shares[strategy]
        print(f"| {strategy} | {source:.1%} | {target:.1%} | {median:.2f} | {base / median:.2f}× |")


if __name__ == "__main__":
    main()
