"""Students past the vocabulary on BBC News: trimmed vocabularies against untrimmed students of one shape.

The teacher is make run's (the packaged MiniLM fine-tuned on the BBC training articles, read from the
quickstart cache or trained once). Every student is distilled with the default job's recipe (slice
init, CE + KL + Σ CKA, 3 epochs at 5e-4, 192 tokens per article) and differs only in its shape and in
`--trim_vocab --trim_keep_top K`: the student keeps the K tokens the training articles use most (plus
the special tokens and the single-character pieces of the data's characters and printable ASCII), the
data is tokenised with its trimmed tokenizer, and the teacher reads the same tokens by its own ids.

Shapes (parameters include the classifier head; compression is the teacher's parameters over the
student's):

    2x128            2 layers × 128, the whole 30,522-token vocabulary (make run's student, ~5×)
    2x128-k14000     the same, 14,000 tokens (~10×)
    2x128-k5000      the same, 5,000 tokens (~20×)
    2x96-k8000       2 layers × 96, 8,000 tokens (~21×: more of the vocabulary, less width)
    2x96-k8800       the same, 8,800 tokens (~20×: the most tokens a 96-wide student keeps at 20×)
    3x96-k7600       3 layers × 96, 7,600 tokens (~20×: a layer instead of 1,200 tokens)
    2x64             2 layers × 64, whole vocabulary (~11×)
    2x64-k6000       6,000 tokens (~40×)
    2x64-k4000       4,000 tokens (~58×)
    2x64-k3000       3,000 tokens (~69×)
    2x64-k2500       2,500 tokens (~70×)

Each finished run is appended to benchmarks/results/trim_bbc.jsonl (kept in the repository) and skipped
when the script runs again; runs over one teacher and one vocabulary share its outputs through
--teacher_cache_dir.

    python benchmarks/trim_bbc.py                                  # the whole grid, 3 seeds
    python benchmarks/trim_bbc.py --students 2x128-k5000 --seeds 0 # a quick look
    python benchmarks/trim_bbc.py --table_only                     # the table of every stored run
    python benchmarks/trim_bbc.py --teacher_on_trimmed 5000 14000  # the teacher reading trimmed tokens
    python benchmarks/trim_bbc.py --students 2x128-k5000 --augment 2  # teacher-labelled perturbed copies
    python benchmarks/trim_bbc.py --students 2x96-k8800 --temperature 2  # also --student_init, --hidden_schedule
    python benchmarks/trim_bbc.py --students 2x96-k8800 --train_windows 3  # up to 3 windows of each article

`--teacher_on_trimmed K...` trains nothing: it scores the teacher on the test articles as a trimmed
student's data reaches it (the K-token tokenizer's pieces, by the teacher's ids), which is the quality
of the signal every K-token student is distilled from.
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
from ckadistill.config import DataArguments, DistillArguments, DistillModelArguments, TaskTrainingArguments
from ckadistill.quickstart import DATA_SEED, QuickstartArguments, train_teacher

logger = logging.getLogger("trim_bbc")
STUDENTS = {  # name: (layers, width, tokens kept or None for the whole vocabulary)
    "2x128": (2, 128, None),
    "2x128-k14000": (2, 128, 14000),
    "2x128-k5000": (2, 128, 5000),
    "2x96-k8000": (2, 96, 8000),
    "2x96-k8800": (2, 96, 8800),
    "3x96-k7600": (3, 96, 7600),
    "2x64": (2, 64, None),
    "2x64-k6000": (2, 64, 6000),
    "2x64-k4000": (2, 64, 4000),
    "2x64-k3000": (2, 64, 3000),
    "2x64-k2500": (2, 64, 2500),
}


def parameters(model_dir: Path) -> int:
    """Parameters stored in a model folder's safetensors file (tied weights are stored once)."""
    from math import prod

    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (the handle is not iterable)


def distil(teacher: Path, files: dict, out: Path, student: str, seed: int, args) -> dict:
    from ckadistill.tasks.classification import run_distill

    quick = QuickstartArguments()
    layers, width, keep = STUDENTS[student]
    metrics = run_distill(
        DistillModelArguments(
            teacher=str(teacher),
            student_layers=layers,
            student_hidden_size=width,
            student_init=args.student_init,
            trim_vocab=keep is not None,
            trim_keep_top=keep,
        ),
        DataArguments(
            train_file=str(files["train"]),
            validation_file=str(files["validation"]),
            test_file=str(files["test"]),
            max_length=quick.max_length,
            augment=args.augment,
            train_windows=args.train_windows,
        ),
        DistillArguments(
            cache_teacher=True,
            cache_teacher_dir=args.teacher_cache_dir,
            cka_max_tokens=args.cka_max_tokens,
            temperature=args.temperature,
            hidden_schedule=args.hidden_schedule,
        ),
        TaskTrainingArguments(
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
    config = json.loads((out / "config.json").read_text())
    trim = (config.get("ckadistill") or {}).get("trim_vocab") or {}
    return {
        "accuracy": metrics["test_accuracy"],
        "teacher_accuracy": metrics["teacher_test_accuracy"],
        "parameters": parameters(out),
        "teacher_parameters": parameters(teacher),
        "bytes": (out / "model.safetensors").stat().st_size,
        "teacher_bytes": (teacher / "model.safetensors").stat().st_size,
        "vocab_size": config["vocab_size"],
        "coverage": trim.get("coverage"),
    }


def teacher_on_trimmed(teacher: Path, files: dict, sizes: list[int]) -> str:
    """Markdown table: the teacher's validation and test accuracy on its own tokens and on each K-token
    trimmed tokenizer's pieces (mapped to its ids), with the coverage of the test tokens."""
    import csv

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ckadistill.vocab import teacher_token_ids, trim_vocabulary

    def read(path):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    train = read(files["train"])
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    splits = {name: read(files[name]) for name in ("validation", "test")}
    max_length = QuickstartArguments().max_length

    @torch.no_grad()
    def accuracy(rows, tok, token_ids=None) -> float:
        right = 0
        for i in range(0, len(rows), 32):
            chunk = rows[i : i + 32]
            batch = tok(
                [r["text"] for r in chunk],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            if token_ids is not None:
                batch["input_ids"] = token_ids[batch["input_ids"]]  # the trimmed pieces, as teacher ids
            predictions = model(**batch).logits.argmax(-1).tolist()
            right += sum(
                p == model.config.label2id[r["label"]] for p, r in zip(predictions, chunk, strict=True)
            )
        return right / len(rows)

    def scores(tok, token_ids=None) -> str:
        return " | ".join(f"{accuracy(rows, tok, token_ids):.2%}" for rows in splits.values())

    lines = [
        "| tokens kept | coverage of test tokens | teacher validation accuracy | teacher test accuracy |",
        "|---:|---:|---:|---:|",
        f"| {len(tokenizer):,} (all) | 100% | {scores(tokenizer)} |",
    ]
    for size in sorted(sizes, reverse=True):
        _, trimmed, info = trim_vocabulary(  # coverage measured on the test texts
            model,
            tokenizer,
            [r["text"] for r in train],
            keep_top=size,
            heldout=[r["text"] for r in splits["test"]],
        )
        token_ids = teacher_token_ids(trimmed, tokenizer)
        lines.append(f"| {size:,} | {info['coverage']:.1%} | {scores(trimmed, token_ids)} |")
    return "\n".join(lines)


# Which single-character WordPiece pieces a trimmed vocabulary keeps: "data" (the data's characters and
# printable ASCII, ckadistill's rule now) or "all" (every one, about 2,000: the rule of the older rows).
CHARACTERS = "data"


# Recipe settings a run may change, with the value of the rows stored before the setting was recorded
# (every run so far used ckadistill's defaults for these); the table names only values that differ.
EXTRAS = {"init": "slice", "temperature": 1.0, "hidden_schedule": "constant", "train_windows": 1}


def extras(r: dict) -> tuple:
    return tuple(r.get(name, default) for name, default in EXTRAS.items())


def changed_extras(extra: tuple) -> list[tuple[str, object]]:
    """The (name, value) pairs of `extras(r)` that differ from the defaults."""
    return [
        (name, value)
        for (name, default), value in zip(EXTRAS.items(), extra, strict=True)
        if value != default
    ]


def run_key(r: dict) -> tuple:
    """What makes a stored run the same run: student, recipe and seed (older rows have no augment and
    kept every single-character piece)."""
    trimmed = STUDENTS[r["student"]][2] is not None
    return (
        r["student"],
        r.get("characters", "all") if trimmed else None,
        r["learning_rate"],
        r["epochs"],
        r.get("cka_max_tokens"),
        r.get("augment", 0),
        extras(r),
        r["seed"],
    )


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values) * scale:.2f}"


def summarise(results: list[dict]) -> str:
    """Markdown table: one row per student, mean ± sample std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(run_key(r)[:-1], []).append(r)  # the seeds of one setting
    lines = [
        "| student | vocabulary | single characters kept | coverage | parameters | compression | MB on disk "
        "| lr, epochs | test accuracy | share of teacher | seeds | minutes per run |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    if results:
        t = results[0]
        lines.append(
            f"| teacher (MiniLM L6 × 384, fine-tuned) | 30,522 | — | — | {t['teacher_parameters']:,} | 1× | "
            f"{t['teacher_bytes'] / 1e6:.1f} | — | {fmt([t['teacher_accuracy']])} | 100% | — | — |"
        )
    order = {name: i for i, name in enumerate(STUDENTS)}

    def sort_key(item):
        name, characters, lr, epochs, cap, augment, extra = item[0]
        defaults = extra == tuple(EXTRAS.values())  # the default recipe's row first
        return order[name], characters or "", lr, epochs, cap or 0, augment, not defaults, str(extra)

    characters_kept = {None: "—", "all": "all", "data": "data + ASCII"}
    for (name, characters, lr, epochs, cap, augment, extra), runs in sorted(groups.items(), key=sort_key):
        r = runs[0]
        share = [x["accuracy"] / x["teacher_accuracy"] for x in runs]
        coverage = f"{r['coverage']:.1%}" if r.get("coverage") is not None else "100%"
        changed = "".join(f", {key} {value}" for key, value in changed_extras(extra))
        lines.append(
            f"| {name}{f' (CKA on {cap} tokens)' if cap else ''}{f', augmented copies ×{augment}' if augment else ''}"
            f"{changed} "
            f"| {r['vocab_size']:,} | {characters_kept[characters]} | {coverage} | {r['parameters']:,} | "
            f"{r['teacher_parameters'] / r['parameters']:.1f}× | {r['bytes'] / 1e6:.2f} | {lr:g}, {epochs:g} | "
            f"{fmt([x['accuracy'] for x in runs])} | {fmt(share)}% | {len(runs)} | "
            f"{statistics.fmean(x['minutes'] for x in runs):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/bench-trim")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "trim_bbc.jsonl"))
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    quick = QuickstartArguments()
    parser.add_argument("--epochs", type=float, default=quick.student_epochs, help="Distillation epochs.")
    parser.add_argument("--learning_rate", type=float, default=quick.student_learning_rate)
    parser.add_argument(
        "--cka_max_tokens", type=int, default=None, help="CKA on at most N tokens per step (a cheaper step)."
    )
    parser.add_argument(
        "--augment",
        type=int,
        default=0,
        help="Perturbed copies of every training article, labelled by the teacher (ckadistill's --augment).",
    )
    parser.add_argument(
        "--student_init",
        default=quick.student_init,
        choices=["slice", "pca", "random"],
        help="How the student starts from the teacher (ckadistill's --student_init).",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature of the KL term.")
    parser.add_argument(
        "--hidden_schedule",
        default="constant",
        choices=["constant", "linear_decay"],
        help="Weight of the CKA term over training (ckadistill's --hidden_schedule).",
    )
    parser.add_argument(
        "--train_windows",
        type=int,
        default=1,
        help="Up to N windows of 192 tokens from each training article (ckadistill's --train_windows).",
    )
    parser.add_argument(
        "--teacher_cache_dir",
        default=None,
        help="Keep the teacher's outputs here, shared by runs over one vocabulary "
        "(default: <output_dir>/teacher-outputs).",
    )
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument(
        "--teacher_on_trimmed",
        nargs="+",
        type=int,
        metavar="K",
        help="Score the teacher on K-token trimmed test data for each K; train nothing.",
    )
    args = parser.parse_args()
    results_file = Path(args.results)
    results = [json.loads(line) for line in results_file.open()] if results_file.exists() else []
    if args.table_only:
        print(summarise(results))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)
    out = Path(args.output_dir)
    args.teacher_cache_dir = args.teacher_cache_dir or str(out / "teacher-outputs")
    files = write_splits(out / "bbc", seed=DATA_SEED)
    teacher = train_teacher(QuickstartArguments(), files)
    if args.teacher_on_trimmed:
        print(teacher_on_trimmed(teacher, files, args.teacher_on_trimmed))
        return
    results_file.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for r in results}
    for seed in args.seeds:  # seeds outermost: a partial grid still covers every student
        for student in args.students:
            row = {
                "characters": CHARACTERS,
                "student": student,
                "learning_rate": args.learning_rate,
                "epochs": args.epochs,
                "cka_max_tokens": args.cka_max_tokens,
                "augment": args.augment,
                "init": args.student_init,
                "temperature": args.temperature,
                "hidden_schedule": args.hidden_schedule,
                "train_windows": args.train_windows,
                "seed": seed,
            }
            if run_key(row) in done:
                continue
            start = time.perf_counter()
            cap = f"-cka{args.cka_max_tokens}" if args.cka_max_tokens else ""
            cap += f"-aug{args.augment}" if args.augment else ""
            cap += "".join(f"-{name}-{value}" for name, value in changed_extras(extras(row)))
            run_dir = out / "runs" / f"{student}-lr{args.learning_rate:g}-e{args.epochs:g}{cap}-s{seed}"
            row.update(distil(teacher, files, run_dir, student, seed, args))
            row["minutes"] = (time.perf_counter() - start) / 60
            with results_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            results.append(row)
            logger.info("%s", row)
    print(summarise(results))


if __name__ == "__main__":
    main()
