"""Ablation on BBC News: which hidden-state loss and which initialisation help a small student?

Grid: hidden loss in {none, mse_proj, cka} × student init in {random, slice, pca}
× seeds, in two regimes:

- full: every training row labelled; the teacher is the quickstart's MiniLM (all labels).
- low:  10% of the training rows labelled (stratified); the teacher is MiniLM fine-tuned on those
        only; the student trains on all training text, the other 90% supervised only by the teacher
        (logits, and hidden states where a hidden loss is on).

Every student: 2 layers × 128 wide (5.2× smaller than the teacher), CE + KL + hidden loss over the
uniform map 0:0,1:3,2:6, teacher outputs cached. The hidden term is the paper's (weight 1 per pair,
summed) unless --alpha_hidden / --hidden_reduction / --hidden_schedule / --hidden_level / --layer_map
say otherwise; each run records its recipe ("1·sum" for the paper's, "0.1·mean·seq" and so on), and
the table keeps recipes and settings apart. Results are appended to
benchmarks/results/ablation_bbc.jsonl (kept in the repository) as each run ends, so an interrupted
ablation resumes where it stopped.

    python benchmarks/ablation_bbc.py                       # the paper's recipe over the grid (hours)
    python benchmarks/ablation_bbc.py --regimes low --losses cka mse_proj --alpha_hidden 0.1 --hidden_reduction mean
    python benchmarks/ablation_bbc.py --seeds 0 --regimes low --epochs 2   # a quick look
    python benchmarks/ablation_bbc.py --table_only          # the table of every stored run
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
from ckadistill.config import (
    ClassificationTrainingArguments,
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
)
from ckadistill.packaged import minilm_path
from ckadistill.quickstart import QuickstartArguments, default_cache_dir, train_teacher
from ckadistill.tasks.classification import run_distill, run_finetune

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
        overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
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
            alpha_hidden=0.0 if loss == "none" else args.alpha_hidden,
            hidden_reduction=args.hidden_reduction,
            hidden_schedule=args.hidden_schedule,
            hidden_level=args.hidden_level,
            layer_map=args.layer_map,
            cache_teacher=True,
        ),
        ClassificationTrainingArguments(
            overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
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
        "validation_accuracy": metrics["eval_accuracy"],  # recipes are chosen on these, not on test
        "validation_macro_f1": metrics["eval_macro_f1"],
        "teacher_accuracy": metrics["teacher_test_accuracy"],
        "teacher_macro_f1": metrics["teacher_test_macro_f1"],
    }


def recipe(alpha_hidden: float, reduction: str, schedule: str, level: str, layer_map: str) -> str:
    """Short name of a hidden-term recipe, e.g. '1·sum' (the paper's) or '0.1·mean·seq·decay·last'."""
    name = f"{alpha_hidden:g}·{reduction}" + ("·seq" if level == "sequence" else "")
    name += "·decay" if schedule == "linear_decay" else ""
    return name if layer_map == "uniform" else f"{name}·{layer_map}"


def run_key(r: dict) -> tuple:
    """What identifies a run; records written before recipes were recorded used the paper's."""
    hidden = "—" if r["loss"] == "none" else r.get("recipe", "1·sum")
    return (r["regime"], r["init"], r["loss"], hidden, r["max_length"], r["epochs"], r["seed"])


def summarise(results: list[dict]) -> str:
    """Markdown table: mean ± sample std over seeds per (regime, init, loss, recipe, settings)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(run_key(r)[:-1], []).append(r)

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        if len(values) == 1:
            return f"{100 * mean:.2f}"  # one seed: no spread to show
        return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"

    lines = [
        "| regime | init | hidden loss | weight·reduction | tokens | epochs | test accuracy (%) "
        "| test macro-F1 (%) | seeds | teacher accuracy (%) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (regime, init, loss, hidden, max_length, epochs), runs in sorted(groups.items()):
        lines.append(
            f"| {regime} | {init} | {loss} | {hidden} | {max_length} | {epochs:g} | "
            f"{fmt([r['accuracy'] for r in runs])} | "
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
    parser.add_argument(
        "--inits", nargs="+", default=["random", "slice", "pca"], choices=["random", "slice", "pca"]
    )
    parser.add_argument(
        "--losses", nargs="+", default=["none", "mse_proj", "cka"], choices=["none", "mse_proj", "cka"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--low_teacher_epochs", type=float, default=10.0)
    parser.add_argument("--alpha_hidden", type=float, default=1.0, help="Weight of the hidden term.")
    parser.add_argument("--hidden_reduction", default="sum", choices=["sum", "mean"])
    parser.add_argument("--hidden_schedule", default="constant", choices=["constant", "linear_decay"])
    parser.add_argument("--hidden_level", default="token", choices=["token", "sequence"])
    parser.add_argument(
        "--layer_map", default="uniform", help="Pairs of the hidden term (see `ckadistill distill`)."
    )
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
    done = {run_key(r) for r in results}
    hidden_recipe = recipe(
        args.alpha_hidden, args.hidden_reduction, args.hidden_schedule, args.hidden_level, args.layer_map
    )
    teachers = {}
    if "full" in args.regimes:
        teachers["full"] = train_teacher(QuickstartArguments(), splits)
    if "low" in args.regimes:
        teachers["low"] = low_label_teacher(splits, default_cache_dir(), args.low_teacher_epochs)

    for seed in args.seeds:  # seeds outermost: a partial run still covers every cell
        for regime in args.regimes:
            for init in args.inits:
                for loss in args.losses:
                    record = {"regime": regime, "init": init, "loss": loss, "seed": seed}
                    record.update(recipe=hidden_recipe, max_length=args.max_length, epochs=args.epochs)
                    key = run_key(record)
                    if key in done:
                        continue
                    start = time.perf_counter()
                    run_dir = out / "runs" / "-".join(str(part) for part in key)
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
                    record.update(scores, minutes=(time.perf_counter() - start) / 60)
                    with results_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    results.append(record)
                    logger.info(
                        "%s: accuracy %.4f, macro-F1 %.4f", key, scores["accuracy"], scores["macro_f1"]
                    )
    print(summarise([r for r in results if r["regime"] in args.regimes]))


if __name__ == "__main__":
    main()
