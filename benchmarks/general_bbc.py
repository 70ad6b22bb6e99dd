"""Students from little task data, on BBC News: task-agnostic (general) distillation and augmentation.

Three parts, each resumable (finished runs are appended to benchmarks/results/general_bbc.jsonl, kept in
the repository, and skipped when the script runs again):

1. embeddings  all-MiniLM-L6-v2 → 2L/128d and 4L/192d sentence encoders, general-distilled on the
               body sentences of the training and validation articles (`--task general`, CKA on the
               mapped layers + CKA on the pooled vectors, teacher cached). Scored against the teacher:
               - kNN topic accuracy: test articles classified by their 5 nearest training articles
                 (cosine of the pooled, normalised vectors of each article's first 128 tokens);
               - similarity Spearman: the correlation of the student's and the teacher's cosine
                 similarities over every pair of 400 sentences of test articles.
               The initial students (the same shapes, pca-initialised, untrained) are the baseline.
2. headlines   a short-text task built from headlines only: 400 labelled training headlines (80 per
               topic), 200 for validation, the test articles' headlines for testing. Teacher: MiniLM
               fine-tuned on the 400. Students 2L/128d distilled with the classification defaults
               (CE + KL + Σ CKA) from four starts: `default` (slice of the teacher), `general` (the
               general-distilled 2L/128d student of part 1), `augment` (default + 8 perturbed,
               teacher-labelled copies of each headline) and `general+augment`.
3. transfer    task distillation on the full BBC task (make run's splits and teacher, from the cache)
               from `random`, `slice`, `pca` and `general` starts, with all labels and with 10%.

    python benchmarks/general_bbc.py --corpus_sentences 16000             # every part, one process
    python benchmarks/general_bbc.py --parts embeddings --seeds 0 --general_epochs 1   # a quick look
    python benchmarks/general_bbc.py --table_only                          # the tables of every stored run

Time on 2 CPU cores (one torch thread per process, two processes side by side): a 2L/128d general
student 8-10 minutes, a 4L/192d one about 20 (16,000 corpus sentences, 2 epochs, teacher cached); a
headline run 0.3-1.3; a transfer run 5-7.5 (teacher outputs shared through --teacher_cache_dir, but
every run scores the teacher on validation and test again). Every part can run in its own process
(`--parts`, `--shapes`, `--seeds`, `--starts`), all appending to the same results file.
"""

import argparse
import json
import logging
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ckadistill.bbc import load_headline_articles, stratified_split, write_splits
from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
    TaskTrainingArguments,
)
from ckadistill.packaged import minilm_path
from ckadistill.quickstart import DATA_SEED, QuickstartArguments, remove_checkpoints, train_teacher
from ckadistill.tasks.seq2seq_metrics import split_sentences

logger = logging.getLogger("general_bbc")
SHAPES = {"2x128": (2, 128), "4x192": (4, 192)}
MIN_WORDS, MAX_WORDS = 5, 40
HEADLINES_PER_TOPIC = 80  # 400 labelled training headlines
KNN_K = 5
SIMILARITY_SENTENCES = 400
LOW_LABEL_FRACTION = 0.1
STARTS = ("random", "slice", "pca", "general")  # of the transfer part


# ---------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------


def write_data(folder: Path) -> dict[str, Path]:
    """The corpus and evaluation files, all from the classification job's article split."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = stratified_split(load_headline_articles(), (0.7, 0.1, 0.2), DATA_SEED)
    paths = {
        "corpus": folder / "corpus.txt",  # body sentences of training and validation articles
        "corpus_validation": folder / "corpus_validation.txt",
        "similarity": folder / "similarity.txt",  # held-out sentences (test articles)
        "headlines_train": folder / "headlines_train.csv",
        "headlines_validation": folder / "headlines_validation.csv",
        "headlines_test": folder / "headlines_test.csv",
    }
    if all(p.is_file() for p in paths.values()):
        return paths

    def sentences(rows):
        out = []
        for row in rows:
            for paragraph in row["body"]:
                out += [s for s in split_sentences(paragraph) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]
        return out

    seen = sentences(splits["train"] + splits["validation"])
    random.Random(0).shuffle(seen)
    held = max(500, len(seen) // 50)
    paths["corpus"].write_text("\n".join(seen[held:]) + "\n", encoding="utf-8")
    paths["corpus_validation"].write_text("\n".join(seen[:held]) + "\n", encoding="utf-8")
    test_sentences = sentences(splits["test"])
    random.Random(1).shuffle(test_sentences)
    paths["similarity"].write_text("\n".join(test_sentences[:SIMILARITY_SENTENCES]) + "\n", encoding="utf-8")

    import csv

    by_topic: dict[str, list[dict]] = {}
    for row in splits["train"]:
        by_topic.setdefault(row["label"], []).append(row)
    train_rows = [r for topic in sorted(by_topic) for r in by_topic[topic][:HEADLINES_PER_TOPIC]]
    random.Random(2).shuffle(train_rows)
    for name, rows in (
        ("headlines_train", train_rows),
        ("headlines_validation", splits["validation"][:200]),
        ("headlines_test", splits["test"]),
    ):
        with paths[name].open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([r["headline"], r["label"]] for r in rows)
    return paths


# ---------------------------------------------------------------------------------------------------
# Embedding quality.
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed(model_dir: str, texts: list[str], max_length: int = 128) -> torch.Tensor:
    """`(N, d)` normalised mean-pooled last hidden states."""
    from transformers import AutoModel, AutoTokenizer

    from ckadistill.losses import mean_pool

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    out = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(
            texts[start : start + 64],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state
        out.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
    return torch.cat(out)


def knn_accuracy(model_dir: str, articles: dict[str, list[dict]]) -> float:
    index = embed(model_dir, [r["headline"] + " " + " ".join(r["body"]) for r in articles["train"]])
    queries = embed(model_dir, [r["headline"] + " " + " ".join(r["body"]) for r in articles["test"]])
    labels = [r["label"] for r in articles["train"]]
    nearest = (queries @ index.T).topk(KNN_K, dim=1).indices  # (Q, k)
    correct = 0
    for row, neighbours in zip(articles["test"], nearest.tolist(), strict=True):
        votes = [labels[i] for i in neighbours]
        correct += max(set(votes), key=votes.count) == row["label"]
    return correct / len(articles["test"])


def embedding_scores(model_dir: str, teacher_dir: str, articles, sentences: list[str]) -> dict:
    from ckadistill.tasks.general import embedding_agreement

    agreement = embedding_agreement(embed(model_dir, sentences), embed(teacher_dir, sentences))
    return {"knn_accuracy": knn_accuracy(model_dir, articles), **agreement}


# ---------------------------------------------------------------------------------------------------
# Runs.
# ---------------------------------------------------------------------------------------------------


def general_student(paths, out: Path, shape: str, seed: int, args) -> Path:
    from ckadistill.tasks.general import run_distill

    if (out / "config.json").is_file():
        return out
    layers, width = SHAPES[shape]
    run_distill(
        DistillModelArguments(
            teacher=minilm_path(), student_layers=layers, student_hidden_size=width, student_init="pca"
        ),
        DataArguments(
            task="general",
            train_file=str(paths["corpus"]),
            validation_file=str(paths["corpus_validation"]),
            max_length=64,
            max_train_samples=args.corpus_sentences,
        ),
        DistillArguments(
            cache_teacher=True, cache_teacher_max_gb=12.0, cache_teacher_dir=args.teacher_cache_dir
        ),
        TaskTrainingArguments(
            overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
            output_dir=str(out),
            num_train_epochs=args.general_epochs,
            learning_rate=args.general_learning_rate,
            warmup_steps=0.06,
            weight_decay=0.01,
            per_device_train_batch_size=32,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            seed=seed,
        ),
    )
    remove_checkpoints(out)
    return out


def initial_student(out: Path, shape: str, paths) -> Path:
    from ckadistill.students import create_student

    if not (out / "config.json").is_file():
        layers, width = SHAPES[shape]
        create_student(
            minilm_path(),
            str(out),
            num_layers=layers,
            hidden_size=width,
            init="pca",
            init_data=str(paths["corpus"]),
        )
    return out


def classification_student(
    teacher: Path,
    files: dict,
    out: Path,
    *,
    start: str,
    general: Path | None,
    seed: int,
    augment: int,
    labelled: float,
    epochs: float,
    max_length: int,
    cache_dir: str | None = None,
) -> dict:
    from ckadistill.tasks.classification import run_distill

    model = (
        DistillModelArguments(teacher=str(teacher), student=str(general))
        if start == "general"
        else DistillModelArguments(
            teacher=str(teacher), student_layers=2, student_hidden_size=128, student_init=start
        )
    )
    metrics = run_distill(
        model,
        DataArguments(
            train_file=str(files["train"]),
            validation_file=str(files["validation"]),
            test_file=str(files["test"]),
            max_length=max_length,
            labelled_fraction=labelled,
            augment=augment,
        ),
        DistillArguments(cache_teacher=True, cache_teacher_dir=cache_dir),
        TaskTrainingArguments(
            overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
            output_dir=str(out),
            num_train_epochs=epochs,
            learning_rate=5e-4,
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
        "teacher_accuracy": metrics["teacher_test_accuracy"],
        "validation_accuracy": metrics["eval_accuracy"],
    }


def headline_teacher(files: dict, out: Path) -> Path:
    from ckadistill.tasks.classification import run_finetune

    if not (out / "config.json").is_file():
        run_finetune(
            FinetuneModelArguments(model_name_or_path=minilm_path()),
            DataArguments(
                train_file=str(files["train"]), validation_file=str(files["validation"]), max_length=32
            ),
            TaskTrainingArguments(
                overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
                output_dir=str(out),
                num_train_epochs=10,
                learning_rate=1e-4,
                warmup_steps=0.1,
                weight_decay=0.01,
                eval_strategy="no",
                save_strategy="no",
                logging_steps=20,
                disable_tqdm=True,
                seed=0,
            ),
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------------------


def fmt(values: list[float], scale: float = 100.0) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.2f}"
    return f"{scale * statistics.mean(values):.2f} ± {scale * statistics.stdev(values):.2f}"


def summarise(results: list[dict]) -> str:
    lines = []
    emb = [r for r in results if r["part"] == "embeddings"]
    if emb:
        lines += [
            "| model | runs | kNN topic accuracy | similarity Spearman | pooled CKA | minutes |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in sorted({r["model"] for r in emb}, key=lambda n: (n != "teacher", n)):
            rows = [r for r in emb if r["model"] == name]
            lines.append(
                f"| {name} | {len(rows)} | {fmt([r['knn_accuracy'] for r in rows])} | "
                f"{fmt([r['similarity_spearman'] for r in rows], 1)} | {fmt([r['pooled_cka'] for r in rows], 1)} | "
                f"{statistics.mean(r['minutes'] for r in rows):.1f} |"
            )
    for part, key in (("headlines", "recipe"), ("transfer", "start")):
        rows_all = [r for r in results if r["part"] == part]
        if not rows_all:
            continue
        lines += [
            "",
            f"| {part}: {key} | labels | runs | student accuracy | teacher accuracy | share of the teacher | minutes |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for group in sorted({(r[key], r["labelled"]) for r in rows_all}):
            rows = [r for r in rows_all if (r[key], r["labelled"]) == group]
            share = [r["accuracy"] / r["teacher_accuracy"] for r in rows]
            lines.append(
                f"| {group[0]} | {group[1]:.0%} | {len(rows)} | {fmt([r['accuracy'] for r in rows])} | "
                f"{fmt([r['teacher_accuracy'] for r in rows][:1])} | {fmt(share)}% | "
                f"{statistics.mean(r['minutes'] for r in rows):.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/bench-general")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "general_bbc.jsonl"))
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["embeddings", "headlines", "transfer"],
        choices=["embeddings", "headlines", "transfer"],
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--corpus_sentences",
        type=int,
        default=None,
        help="Use only the first N corpus sentences (quick looks).",
    )
    parser.add_argument("--general_epochs", type=float, default=2.0)
    parser.add_argument("--general_learning_rate", type=float, default=5e-4)
    parser.add_argument("--headline_epochs", type=float, default=10.0)
    parser.add_argument("--augment", type=int, default=8, help="Perturbed copies per headline.")
    parser.add_argument("--transfer_epochs", type=float, default=3.0)
    parser.add_argument(
        "--starts",
        nargs="+",
        default=list(STARTS),
        choices=list(STARTS),
        help="Starts of the transfer part (the others can run meanwhile in a second process).",
    )
    parser.add_argument(
        "--teacher_cache_dir",
        default=None,
        help="Keep teachers' outputs here so runs over the same teacher and data share one teacher pass "
        "(default: <output_dir>/teacher-outputs).",
    )
    parser.add_argument("--table_only", action="store_true")
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
    paths = write_data(out / "data")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    done = {
        json.dumps(
            {k: v for k, v in r.items() if k in ("part", "model", "recipe", "start", "labelled", "seed")},
            sort_keys=True,
        )
        for r in results
    }

    def run(entry: dict, work) -> None:
        key = json.dumps(entry, sort_keys=True)
        if key in done:
            return
        start = time.perf_counter()
        row = {**entry, **work(), "minutes": (time.perf_counter() - start) / 60}
        with results_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        results.append(row)
        done.add(key)
        logger.info("%s", row)

    general = {(shape, seed): out / "general" / f"{shape}-s{seed}" for shape in SHAPES for seed in args.seeds}
    if "embeddings" in args.parts:
        articles = stratified_split(load_headline_articles(), (0.7, 0.1, 0.2), DATA_SEED)
        sentences = paths["similarity"].read_text(encoding="utf-8").splitlines()
        run(
            {"part": "embeddings", "model": "teacher", "seed": 0},
            lambda: embedding_scores(minilm_path(), minilm_path(), articles, sentences),
        )
        for shape in args.shapes:
            initial = initial_student(out / "initial" / shape, shape, paths)
            run(
                {"part": "embeddings", "model": f"{shape} pca, untrained", "seed": 0},
                lambda d=initial: embedding_scores(str(d), minilm_path(), articles, sentences),
            )
        for seed in args.seeds:
            for shape in args.shapes:
                run(
                    {"part": "embeddings", "model": f"{shape} general", "seed": seed},
                    lambda s=shape, e=seed: embedding_scores(
                        str(general_student(paths, general[(s, e)], s, e, args)),
                        minilm_path(),
                        articles,
                        sentences,
                    ),
                )

    if "headlines" in args.parts:
        files = {
            "train": paths["headlines_train"],
            "validation": paths["headlines_validation"],
            "test": paths["headlines_test"],
        }
        teacher = headline_teacher(files, out / "headline-teacher")
        for seed in args.seeds:
            for recipe in ("default", "general", "augment", "general+augment"):
                start = "general" if recipe.startswith("general") else "slice"
                augment = args.augment if recipe.endswith("augment") else 0
                run(
                    {"part": "headlines", "recipe": recipe, "labelled": 1.0, "seed": seed},
                    lambda st=start, a=augment, e=seed, r=recipe: classification_student(
                        teacher, files, out / "headlines" / f"{r}-s{e}", start=st,
                        general=general_student(paths, general[("2x128", e)], "2x128", e, args) if st == "general" else None,
                        seed=e, augment=a, labelled=1.0, epochs=args.headline_epochs, max_length=32,
                        cache_dir=args.teacher_cache_dir,
                    ),
                )  # fmt: skip

    if "transfer" in args.parts:
        quick = QuickstartArguments()
        split_files = write_splits(out / "bbc", seed=DATA_SEED)
        teacher = train_teacher(quick, split_files)
        for labelled in (1.0, LOW_LABEL_FRACTION):
            for seed in args.seeds:
                for start in args.starts:
                    run(
                        {"part": "transfer", "start": start, "labelled": labelled, "seed": seed},
                        lambda st=start, e=seed, lab=labelled: classification_student(
                            teacher, split_files, out / "transfer" / f"{st}-l{lab:g}-s{e}", start=st,
                            general=general_student(paths, general[("2x128", e)], "2x128", e, args) if st == "general" else None,
                            seed=e, augment=0, labelled=lab, epochs=args.transfer_epochs, max_length=quick.max_length,
                            cache_dir=args.teacher_cache_dir,
                        ),
                    )  # fmt: skip
    print(summarise(results))


if __name__ == "__main__":
    main()
