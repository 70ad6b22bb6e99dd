"""Ablation on BBC News: which hidden-state loss and which initialisation help a small student?

Grid: hidden loss in {none, mse_proj, cka} × student init in {random, slice} (plus pca with --inits)
× seeds, in two regimes:

- full: every training row labelled; the teacher is the quickstart's MiniLM (all labels).
- low:  10% of the training rows labelled (stratified); the teacher is MiniLM fine-tuned on those
        only; the student trains on all training text, the other 90% supervised only by the teacher
        (logits, and hidden states where a hidden loss is on).

Every student: 2 layers × 128 wide (5.2× smaller than the teacher), CE + KL + Σ_pairs hidden loss
(weight 1, summed over the uniform map 0:0,1:3,2:6), teacher outputs cached. Results are appended to
benchmarks/results/ablation_bbc.jsonl (kept in the repository) as each run ends, so an interrupted
ablation resumes where it stopped.

    python benchmarks/ablation_bbc.py                       # the full grid (hours on 2 CPU cores)
    python benchmarks/ablation_bbc.py --seeds 0 --regimes low --epochs 2   # a quick look
"""

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ckadistill.bbc import write_splits
from ckadistill.classification import run_distill, run_finetune
from ckadistill.config import (
    ClassificationTrainingArguments,
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
)
from ckadistill.quickstart import QuickstartArguments, default_cache_dir, minilm_path, train_teacher

logger = logging.getLogger("ablation_bbc")
LOW_LABEL_FRACTION = 0.1


def data_args(splits: dict[str, Path], max_length: int, labelled_fraction: float) -> DataArguments:
    return DataArguments(
        train_file=str(splits["train"]),
        validation_file=str(splits["validation"]),
        test_file=str(splits["test"]),
        max_length=max_length,
        labelled_fraction=labelled_fraction,
    )


def low_label_teacher(splits: dict[str, Path], cache: Path, epochs: float) -> Path:
    """MiniLM fine-tuned on the labelled 10% only (cached like the quickstart teacher)."""
    final = cache / f"bbc-minilm-teacher-low{int(LOW_LABEL_FRACTION * 100)}-e{epochs:g}"
    if (final / "config.json").is_file():
        return final
    training = ClassificationTrainingArguments(
        output_dir=str(final),
        num_train_epochs=epochs,
        learning_rate=1e-4,
        warmup_steps=0.1,
        weight_decay=0.01,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        seed=0,
    )
    run_finetune(
        FinetuneModelArguments(model_name_or_path=minilm_path()),
        data_args(splits, 256, LOW_LABEL_FRACTION),
        training,
    )
    return final


def run_one(teacher: Path, splits, out: Path, *, regime: str, init: str, loss: str, seed: int, args) -> dict:
    fraction = 1.0 if regime == "full" else LOW_LABEL_FRACTION
    metrics = run_distill(
        DistillModelArguments(
            teacher=str(teacher), student_layers=2, student_hidden_size=128, student_init=init
        ),
        data_args(splits, args.max_length, fraction),
        DistillArguments(
            hidden_loss=loss,
            alpha_hidden=0.0 if loss == "none" else 1.0,
            hidden_reduction="sum",
            layer_map="uniform",
            cache_teacher=True,
        ),
        ClassificationTrainingArguments(
            output_dir=str(out),
            num_train_epochs=args.epochs,
            learning_rate=args.learning_rate,
            warmup_steps=0.06,
            weight_decay=0.01,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            seed=seed,
        ),
    )
    return {
        "accuracy": metrics["test_accuracy"],
        "macro_f1": metrics["test_macro_f1"],
        "teacher_accuracy": metrics["teacher_test_accuracy"],
        "teacher_macro_f1": metrics["teacher_test_macro_f1"],
    }


def summarise(results: list[dict]) -> str:
    """Markdown table: mean ± sample std over seeds per (regime, init, loss)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["regime"], r["init"], r["loss"]), []).append(r)

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * mean:.2f} ± {100 * std:.2f}"

    lines = [
        "| regime | init | hidden loss | test accuracy (%) | test macro-F1 (%) | seeds | teacher accuracy (%) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (regime, init, loss), runs in sorted(groups.items()):
        lines.append(
            f"| {regime} | {init} | {loss} | {fmt([r['accuracy'] for r in runs])} | "
            f"{fmt([r['macro_f1'] for r in runs])} | {len(runs)} | {100 * runs[0]['teacher_accuracy']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/ablation", help="Data splits and per-run students.")
    parser.add_argument(
        "--results",
        default=str(Path(__file__).parent / "results" / "ablation_bbc.jsonl"),
        help="One JSON line per finished run; runs already in it are skipped (resume).",
    )
    parser.add_argument("--regimes", nargs="+", default=["full", "low"], choices=["full", "low"])
    parser.add_argument("--inits", nargs="+", default=["random", "slice"], choices=["random", "slice", "pca"])
    parser.add_argument(
        "--losses", nargs="+", default=["none", "mse_proj", "cka"], choices=["none", "mse_proj", "cka"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--low_teacher_epochs", type=float, default=10.0)
    parser.add_argument(
        "--table_only", action="store_true", help="Print the table of --results; train nothing."
    )
    args = parser.parse_args()
    if args.table_only:
        with Path(args.results).open() as f:
            print(summarise([json.loads(line) for line in f]))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)

    out = Path(args.output_dir)
    splits = write_splits(out / "data", seed=0)
    results_file = Path(args.results)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results = [json.loads(line) for line in results_file.open()] if results_file.exists() else []
    done = {(r["regime"], r["init"], r["loss"], r["seed"]) for r in results}
    teachers = {}
    if "full" in args.regimes:
        teachers["full"] = train_teacher(QuickstartArguments(), splits)
    if "low" in args.regimes:
        teachers["low"] = low_label_teacher(splits, default_cache_dir(), args.low_teacher_epochs)

    for seed in args.seeds:  # seeds outermost: a partial run still covers every cell
        for regime in args.regimes:
            for init in args.inits:
                for loss in args.losses:
                    key = (regime, init, loss, seed)
                    if key in done:
                        continue
                    start = time.perf_counter()
                    run_dir = out / "runs" / f"{regime}-{init}-{loss}-s{seed}"
                    scores = run_one(
                        teachers[regime],
                        splits,
                        run_dir,
                        regime=regime,
                        init=init,
                        loss=loss,
                        seed=seed,
                        args=args,
                    )
                    record = {"regime": regime, "init": init, "loss": loss, "seed": seed, **scores}
                    record.update(
                        minutes=(time.perf_counter() - start) / 60,
                        epochs=args.epochs,
                        max_length=args.max_length,
                    )
                    with results_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    results.append(record)
                    logger.info(
                        "%s: accuracy %.4f, macro-F1 %.4f", key, scores["accuracy"], scores["macro_f1"]
                    )
    print(summarise([r for r in results if r["regime"] in args.regimes]))


if __name__ == "__main__":
    main()
