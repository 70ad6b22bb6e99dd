"""Headline generation on BBC News: a bert2bert MiniLM teacher and its small students, side by side.

The task of `ckadistill quickstart --task summarization`: an article's lead paragraph → its headline.
The teacher is the quickstart's (same settings, same cache: a finished quickstart makes it free here).
Students: the quickstart's shape (2+2 layers × 128 wide, 5.5× smaller) distilled with
0.2·CE + 0.8·KL + the hidden loss over encoder and decoder pairs, over the grid

    hidden loss {cka, mse_proj, none} × init {slice, pca} × seeds {0, 1, 2}

Every model is scored on the test split (ROUGE with stemming, greedy decoding with the quickstart's
settings) and timed generating a fixed number of tokens at batch 1 and 16. Each finished run is appended
to benchmarks/results/headlines_bbc.jsonl (kept in the repository), so an interrupted grid resumes where it
stopped; the table is printed at the end. The students train in --workers processes side by side
(default 2, each with an equal share of the torch threads).

    python benchmarks/headlines_bbc.py                     # teacher and the whole grid, 2 processes
    python benchmarks/headlines_bbc.py --seeds 0 --inits slice --losses cka none   # a quick look
    python benchmarks/headlines_bbc.py --table_only        # the table of every stored run
"""

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ckadistill.bbc import write_headline_splits
from ckadistill.quickstart import DATA_SEED
from ckadistill.quickstart_headlines import (
    BATCH_SIZE,
    HeadlineQuickstartArguments,
    _data_args,
    _generation_args,
    distil_student,
    train_teacher,
)
from ckadistill.tasks.seq2seq_evaluate import evaluate_models
from grid import run_grid

logger = logging.getLogger("headlines_bbc")
SCORES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def evaluate(model_dir: Path, splits, args: HeadlineQuickstartArguments) -> dict:
    """Test-split ROUGE, size and generation latency of one saved model (`evaluate_models`' row)."""
    test = replace(_data_args(splits, args), train_file=None, validation_file=None)
    (row,) = evaluate_models(
        [str(model_dir)],
        test,
        _generation_args(args),
        split="test",
        latency_batch_size=BATCH_SIZE,
        latency_new_tokens=args.max_new_tokens,
    )
    return row


def student_run(job: tuple) -> dict:
    """Distil and score one student of the grid (a worker process runs this); returns its stored row."""
    entry, base, splits, teacher, run_dir = job
    start = time.perf_counter()
    run_args = replace(base, seed=entry["seed"], student_init=entry["init"], hidden_loss=entry["loss"])
    # Every run maps the same teacher layers, so the teacher's outputs are computed once for the grid.
    distil_student(run_args, splits, teacher, run_dir, teacher_outputs_dir=run_dir.parent / "teacher-outputs")
    row = evaluate(run_dir, splits, run_args)
    return {**entry, "minutes": (time.perf_counter() - start) / 60, **row}


def run_key(r: dict) -> tuple:
    return (r["init"], r["loss"], r["epochs"], r["seed"])


def summarise(results: list[dict]) -> str:
    """Markdown table: the teacher, then mean ± sample std over seeds per (init, hidden loss, epochs)."""
    teacher = next((r for r in results if r["model"] == "teacher"), None)
    students = [r for r in results if r["model"] == "student"]
    groups: dict[tuple, list[dict]] = {}
    for r in students:
        groups.setdefault(run_key(r)[:-1], []).append(r)

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"

    lines = [
        "| model | init | hidden loss | epochs | parameters | R-1 | R-2 | R-L | R-2 vs teacher "
        "| ms/example (batch 1) | ms/example (batch 16) | seeds | minutes per run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if teacher:
        lines.append(
            f"| teacher (bert2bert MiniLM) | — | — | {teacher['epochs']:g} | {teacher['parameters']:,} | "
            f"{teacher['rouge1']:.2f} | {teacher['rouge2']:.2f} | {teacher['rougeL']:.2f} | 100% | "
            f"{teacher['ms_per_example_bs1']:.1f} | {teacher['ms_per_example_bs16']:.1f} | — | "
            f"{teacher['minutes']:.1f} |"
        )
    for (init, loss, epochs), runs in sorted(groups.items()):
        relative = (
            f"{statistics.fmean(r['rouge2'] for r in runs) / teacher['rouge2']:.1%}" if teacher else "-"
        )
        lines.append(
            f"| student 2+2 × 128 | {init} | {loss} | {epochs:g} | {runs[0]['parameters']:,} | "
            f"{fmt([r['rouge1'] for r in runs])} | {fmt([r['rouge2'] for r in runs])} | "
            f"{fmt([r['rougeL'] for r in runs])} | {relative} | "
            f"{statistics.fmean(r['ms_per_example_bs1'] for r in runs):.1f} | "
            f"{statistics.fmean(r['ms_per_example_bs16'] for r in runs):.1f} | {len(runs)} | "
            f"{statistics.fmean(r['minutes'] for r in runs):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/bench-headlines", help="Data and per-run students.")
    parser.add_argument(
        "--results",
        default=str(Path(__file__).parent / "results" / "headlines_bbc.jsonl"),
        help="One JSON line per finished run; runs already in it are skipped (resume).",
    )
    parser.add_argument("--inits", nargs="+", default=["slice", "pca"], choices=["slice", "pca", "random"])
    parser.add_argument(
        "--losses", nargs="+", default=["cka", "mse_proj", "none"], choices=["cka", "mse_proj", "none"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--student_epochs", type=float, default=None, help="Default: the quickstart's --student_epochs."
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="Student runs side by side, in separate processes."
    )
    parser.add_argument(
        "--table_only", action="store_true", help="Print the table of --results; train nothing."
    )
    args = parser.parse_args()
    results_file = Path(args.results)
    results = [json.loads(line) for line in results_file.open()] if results_file.exists() else []
    if args.table_only:
        print(summarise(results))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    began = time.perf_counter()

    base = HeadlineQuickstartArguments(output_dir=args.output_dir)
    if args.student_epochs is not None:
        base = replace(base, student_epochs=args.student_epochs)
    out = Path(args.output_dir)
    splits = write_headline_splits(out / "data", lead_lines=base.lead_lines, seed=DATA_SEED)
    results_file.parent.mkdir(parents=True, exist_ok=True)

    def record(entry: dict) -> None:
        with results_file.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        results.append(entry)

    start = time.perf_counter()
    teacher = train_teacher(base, splits)  # the quickstart's cached teacher when there is one
    if not any(r["model"] == "teacher" and r["path"] == str(teacher) for r in results):
        minutes = (time.perf_counter() - start) / 60
        record(
            {
                "model": "teacher",
                "epochs": base.teacher_epochs,
                "minutes": minutes,
                **evaluate(teacher, splits, base),
            }
        )

    done = {run_key(r) for r in results if r["model"] == "student"}
    jobs = []
    for seed in args.seeds:  # seeds outermost: a partial grid still covers every cell
        for init in args.inits:
            for loss in args.losses:
                entry = {"model": "student", "init": init, "loss": loss, "epochs": base.student_epochs}
                entry["seed"] = seed
                if run_key(entry) not in done:
                    run_dir = out / "runs" / f"{init}-{loss}-e{base.student_epochs:g}-s{seed}"
                    jobs.append((entry, base, splits, teacher, run_dir))

    def record_student(row: dict) -> None:
        record(row)
        logger.info("%s: %s", run_key(row), {k: round(row[k], 2) for k in SCORES})

    start = time.perf_counter()
    run_grid(jobs, student_run, record_student, workers=args.workers)
    logger.info("%d student runs in %.1f min", len(jobs), (time.perf_counter() - start) / 60)
    logger.info("Whole run: %.1f min", (time.perf_counter() - began) / 60)
    print(summarise(results))


if __name__ == "__main__":
    main()
