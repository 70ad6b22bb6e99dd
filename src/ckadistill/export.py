"""Deploy a sequence classifier as ONNX: export, int8 quantisation, and checks against PyTorch.

    report = export_student("outputs/student", "outputs/student-onnx", int8=True, data="test.csv")

The output folder is self-contained, in the layout optimum writes: `model.onnx` (plus `model_int8.onnx`
with `int8=True`), `config.json`, the tokenizer files and `export_report.json`. Before anything is
reported as a success, every ONNX file is run with onnxruntime on CPU beside the PyTorch model: the fp32
file must give the same logits (and, with a data file, the same accuracy); the int8 file's differences
are measured and reported. A short speed test puts the three side by side.

optimum-onnx is not used: it pins transformers<4.58, and ckadistill is on transformers 5.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ckadistill.runs import check_folder_is_free, check_model_folder

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
REPORT_FILE = "export_report.json"
INSTALL_HINT = 'pip install "ckadistill[onnx]"'

# The fp32 tolerance on the largest |logit difference| is RELATIVE_TOLERANCE x the logit scale (the
# largest |PyTorch logit|, at least 1). fp32 ONNX and PyTorch do the same arithmetic in another order
# (fused kernels, other summation order): rounding of ~1e-7 per operation that grows to ~1e-6..1e-5 of
# the scale through a deep encoder. 1e-3 is two orders above that, yet a real export fault moves logits
# by a sizeable part of their scale (the TorchScript exporter's frozen attention mask: 1.7e-2 on logits
# of ~1e-2), so rounding passes and bugs fail. The floor of 1 keeps a random model's near-zero logits
# from asking for more than rounding can give.
RELATIVE_TOLERANCE = 1e-3
# fp32 ONNX may disagree with PyTorch on at most this many examples: an example whose two top logits
# tie to within rounding can flip either way.
ACCURACY_SLACK = 1
# Timing: one untimed warm-up batch, then this many timed batches at each batch size.
SPEED_BATCHES = 10
# Above this many bytes of weights, the ONNX protobuf limit (2 GiB) needs the weights in a side file.
SINGLE_FILE_LIMIT = 1_800_000_000

# Sample inputs when no --data is given: varied lengths, so padding is exercised.
SAMPLE_SENTENCES = [
    "The central bank raised interest rates again this morning.",
    "What a match!",
    "The new phone has a faster chip, a brighter screen and a battery that lasts two days.",
    "Parliament will vote on the budget next week after a long debate about taxes and spending.",
    "The film won three awards.",
    "Shares fell sharply when the company warned that profits would be lower than expected this year.",
    "She scored twice in the second half.",
    "A software update fixes the security flaw.",
]


class ParityError(RuntimeError):
    """The fp32 ONNX model does not reproduce the PyTorch model (the export is wrong, not the input).

    `report` holds the measurements, as written to `export_report.json`.
    """

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------------------
# Checks before any work.
# ---------------------------------------------------------------------------------------------------


def check_onnx_installed() -> None:
    """Raise if the optional ONNX packages are missing, with the command that installs them."""
    missing = [
        name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ValueError(f"export needs {', '.join(missing)}, which is not installed: run `{INSTALL_HINT}`")


def check_student_dir(student_dir: str | Path) -> PretrainedConfig:
    """The config of a saved encoder-only sequence classifier with its tokenizer, else a ValueError."""
    from transformers import AutoConfig

    path = Path(student_dir)
    if not path.is_dir():
        raise ValueError(f"STUDENT_DIR {path} is not a folder; give a model saved with save_pretrained")
    if not (path / "config.json").is_file():
        raise ValueError(f"STUDENT_DIR {path} has no config.json; give a model saved with save_pretrained")
    check_model_folder(path, "STUDENT_DIR")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(
            f"STUDENT_DIR {path} has no tokenizer; save it beside the model with tokenizer.save_pretrained"
        )
    config = AutoConfig.from_pretrained(path)
    if config.is_encoder_decoder:
        raise ValueError(
            f"STUDENT_DIR {path} is an encoder-decoder model ({config.model_type}); its export is not "
            "supported yet: a seq2seq model deploys as separate encoder and decoder graphs with a "
            "key/value cache, driven by a generation loop, which one export of forward() does not give. "
            "export handles encoder-only *ForSequenceClassification models"
        )
    architectures = config.architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ValueError(
            f"STUDENT_DIR {path} holds {', '.join(architectures) or 'a model of unknown class'}, not a "
            "sequence classifier (*ForSequenceClassification); export writes classifiers only "
            "(give a model made by `ckadistill finetune` or `ckadistill distill`)"
        )
    return config


def check_output_dir(output: str | Path, student_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse to write into the student's own folder, or into a non-empty folder without `overwrite`."""
    output, student_dir = Path(output), Path(student_dir)
    if output.resolve() == student_dir.resolve():
        raise ValueError("--output must be a folder other than STUDENT_DIR")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder")
    check_folder_is_free(output, "--output", overwrite=overwrite, overwrite_flag="--overwrite_output_dir")


# ---------------------------------------------------------------------------------------------------
# Data: texts and gold class ids.
# ---------------------------------------------------------------------------------------------------


def _label_id(value: Any, config: PretrainedConfig) -> int | None:
    """A class id from a label name of `config.label2id` or from a class index; None when neither."""
    key = str(value).strip()
    if key in config.label2id:
        return int(config.label2id[key])
    if key.lstrip("-").isdigit() and 0 <= int(key) < config.num_labels:
        return int(key)
    return None


def read_labelled_file(
    path: str | Path, config: PretrainedConfig, *, text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[int] | None]:
    """Texts and gold class ids of a .csv or .jsonl file; labels are None for a regression head.

    Labels may be names (mapped through `config.label2id`) or class indices. Every problem is raised
    as a ValueError naming the flag that fixes it.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".jsonl"):
        raise ValueError(f"--data must be a .csv or .jsonl file, got {path.name!r}")
    if not path.is_file():
        raise ValueError(f"--data file not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    if not rows:
        raise ValueError(f"--data {path} holds no rows")
    classify = config.num_labels > 1
    wanted = [(text_column, "text_column")] + ([(label_column, "label_column")] if classify else [])
    for column, flag in wanted:
        if column not in rows[0]:
            raise ValueError(f"--{flag} {column!r} is not in {path.name}; its columns are {sorted(rows[0])}")
    texts = [str(row[text_column]) for row in rows]
    if not classify:
        logger.warning("The model has a regression head: --data gives texts only, no accuracy is computed")
        return texts, None
    labels = []
    for number, row in enumerate(rows, start=1):
        label = _label_id(row[label_column], config)
        if label is None:
            raise ValueError(
                f"--data {path.name} row {number}: label {row[label_column]!r} is neither a label of the "
                f"model ({', '.join(map(str, config.label2id))}) nor a class index 0..{config.num_labels - 1}; "
                "check --label_column"
            )
        labels.append(label)
    return texts, labels


# ---------------------------------------------------------------------------------------------------
# Export and quantisation.
# ---------------------------------------------------------------------------------------------------


class LogitsOnly(torch.nn.Module):
    """A classifier whose forward takes the tokenizer's tensors by name and returns only the logits."""

    def __init__(self, classifier: PreTrainedModel):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # (B, T) each -> (B, num_labels)
        # token_type_ids goes in only when the tokenizer makes it (DistilBERT's takes none).
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


@contextlib.contextmanager
def _without_messages(logger_name: str | None, *fragments: str) -> Iterator[None]:
    """Drop records logged to one logger (None: the root logger) that contain any of `fragments`:
    known, harmless noise from the exporter and the quantiser."""
    target = logging.getLogger(logger_name)

    def keep(record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in fragments)

    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


def export_onnx(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path, *, max_length: int = 128
) -> list[str]:
    """Write `model` as one ONNX graph from the tokenizer's tensors to `logits`; returns the input names.

    Batch and sequence axes are dynamic (named `batch` and `sequence`). The weights stay inside the
    file unless they pass the 2 GiB protobuf limit (then `model.onnx.data` sits beside it).
    """
    # dynamo=True: the TorchScript tracer (dynamo=False) freezes transformers 5's Python-level mask
    # shortcuts into constants and gave logits off by ~1e-2 on other padding; torch.export keeps them symbolic.
    example = tokenizer(
        SAMPLE_SENTENCES[:2], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in example]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with (
        warnings.catch_warnings(),
        _without_messages("torch.onnx._internal.exporter._registration", "torchvision"),
    ):
        # Named axes shared by every input trigger a notice per input; the names are kept all the same.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            LogitsOnly(model).eval(),
            (),
            kwargs={name: example[name] for name in names},
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
            dynamo=True,
            verbose=False,
        )
    # The exporter tags every node with its Python stack trace (paths of this machine, ~4x the weights
    # of a tiny model); a deployed file needs none of it.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    program.save(str(path), external_data=weight_bytes > SINGLE_FILE_LIMIT)
    return names


def quantize(source: str | Path, target: str | Path) -> None:
    """Write an int8 copy of an ONNX model: weights stored as QInt8, activations quantised on the fly.

    onnxruntime's pre-processing step (symbolic shape inference) is skipped: it cannot read the
    `Min(...)` shapes the dynamo exporter writes, and dynamic quantisation works without it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = Path(f"{source}.data").exists()
    with _without_messages(None, "pre-processing before quantization"):
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, use_external_data_format=large
        )


# ---------------------------------------------------------------------------------------------------
# Running, comparing and timing the models.
# ---------------------------------------------------------------------------------------------------

Batch = dict[str, np.ndarray]
Runner = Callable[[Batch], np.ndarray]  # a batch of int64 inputs -> (B, num_labels) float32 logits


def torch_runner(model: PreTrainedModel) -> Runner:
    """Logits of the PyTorch model, in inference mode."""

    def run(batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(array) for name, array in batch.items()}
            return model(**inputs).logits.float().numpy()

    return run


def onnx_runner(path: str | Path, threads: int) -> Runner:
    """Logits of an ONNX file run by onnxruntime on CPU, with as many threads as PyTorch uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [node.name for node in session.get_inputs()]

    def run(batch: Batch) -> np.ndarray:
        return session.run(["logits"], {name: batch[name] for name in inputs})[0]

    return run


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    names: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
) -> list[Batch]:
    """Texts as int64 numpy batches, each padded to its longest text (as a deployment would)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batches.append({name: encoded[name].astype(np.int64) for name in names})
    return batches


def predict(run: Runner, batches: Sequence[Batch]) -> np.ndarray:
    """Logits of every example, `(N, num_labels)`."""
    return np.concatenate([run(batch) for batch in batches])


def examples_per_second(run: Runner, batches: Sequence[Batch]) -> float:
    """Throughput over `batches` after one untimed warm-up batch; tokenisation is outside the timing."""
    run(batches[0])
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    elapsed = time.perf_counter() - start
    return sum(len(batch["input_ids"]) for batch in batches) / max(elapsed, 1e-9)


@dataclass
class Comparison:
    """How one model's logits compare with the PyTorch reference on the same examples."""

    max_abs_diff: float  # largest |logit - reference logit|
    tolerance: float  # RELATIVE_TOLERANCE x the reference's logit scale
    correct: int | None = None  # examples whose argmax is the gold label (None without labels)
    reference_correct: int | None = None

    @property
    def logits_agree(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    @property
    def accuracy_agrees(self) -> bool:
        if self.correct is None or self.reference_correct is None:
            return True
        return abs(self.correct - self.reference_correct) <= ACCURACY_SLACK


def compare(reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int] | None = None) -> Comparison:
    """Compare `(N, C)` logits with the reference's; count correct answers of both when labels are given."""
    scale = max(1.0, float(np.abs(reference).max()))
    comparison = Comparison(
        max_abs_diff=float(np.abs(candidate - reference).max()), tolerance=RELATIVE_TOLERANCE * scale
    )
    if labels is not None:
        gold = np.asarray(labels)
        comparison.correct = int((candidate.argmax(-1) == gold).sum())
        comparison.reference_correct = int((reference.argmax(-1) == gold).sum())
    return comparison


def _weight_files(student_dir: Path) -> list[Path]:
    """The PyTorch weight files of a saved model (safetensors preferred, as from_pretrained does)."""
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        found = sorted(student_dir.glob(pattern))
        if found:
            return found
    raise ValueError(f"STUDENT_DIR {student_dir} holds no weights")


def _size_mb(path: Path) -> float:
    """Size of a model file in MB (10^6 bytes), with its external-data side file when there is one."""
    files = [path, Path(f"{path}.data")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


# ---------------------------------------------------------------------------------------------------
# The whole job.
# ---------------------------------------------------------------------------------------------------


def export_student(
    student_dir: str | Path,
    output: str | Path,
    *,
    int8: bool = False,
    data: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    batch_size: int = 32,
    overwrite_output_dir: bool = False,
) -> dict[str, Any]:
    """Export, quantise, check and time a saved classifier; write everything into `output`.

    Returns the report also written to `output/export_report.json`: one row per model (PyTorch fp32,
    ONNX fp32, ONNX int8) with file, size, largest logit difference, accuracy and examples/s.

    Raises:
        ValueError: bad input, found before any work (folder, model kind, output folder, data, packages).
        ParityError: the fp32 ONNX model disagrees with PyTorch (the report is written first).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # Checks: everything the user can get wrong fails here, before the export starts.
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"--max_length must be >= 2 (room for the special tokens), got {max_length}")
    check_onnx_installed()
    config = check_student_dir(student_dir)
    check_output_dir(output, student_dir, overwrite=overwrite_output_dir)
    if data is not None:
        texts, labels = read_labelled_file(data, config, text_column=text_column, label_column=label_column)
    else:
        texts, labels = list(SAMPLE_SENTENCES), None

    # Model and tokenizer, in fp32 whatever dtype they were saved in.
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir, dtype=torch.float32).eval()
    max_length = min(max_length, tokenizer.model_max_length)

    # Export: the ONNX file(s), the config and the tokenizer, so the folder deploys on its own.
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if not int8 and (output / INT8_FILE).exists():
        # Left by an earlier --int8 run into this folder (--overwrite_output_dir): it would contradict the report.
        (output / INT8_FILE).unlink()
    logger.info("Exporting %s to %s", student_dir, output / ONNX_FILE)
    names = export_onnx(model, tokenizer, output / ONNX_FILE, max_length=max_length)
    model.config.save_pretrained(output)
    tokenizer.save_pretrained(output)
    files = {"ONNX fp32": output / ONNX_FILE}
    if int8:
        logger.info("Quantising to %s", output / INT8_FILE)
        quantize(output / ONNX_FILE, output / INT8_FILE)
        files["ONNX int8"] = output / INT8_FILE

    # Parity and accuracy: every model scores the same batches.
    threads = torch.get_num_threads()
    runners = {"PyTorch fp32": torch_runner(model)} | {
        name: onnx_runner(path, threads) for name, path in files.items()
    }
    batches = encode(tokenizer, texts, names, batch_size=batch_size, max_length=max_length)
    logits = {name: predict(run, batches) for name, run in runners.items()}
    comparisons = {name: compare(logits["PyTorch fp32"], logits[name], labels) for name in runners}

    # Speed: the same texts, cycled to fill SPEED_BATCHES batches at batch 1 and at batch_size.
    speed_batches = {}
    for size in sorted({1, batch_size}):
        sample = [texts[i % len(texts)] for i in range(size * SPEED_BATCHES)]
        speed_batches[size] = encode(tokenizer, sample, names, batch_size=size, max_length=max_length)

    weights = _weight_files(Path(student_dir))
    rows = []
    for name, run in runners.items():
        comparison = comparisons[name]
        model_files = weights if name == "PyTorch fp32" else [files[name]]
        rows.append(
            {
                "name": name,
                "file": model_files[0].name if len(model_files) == 1 else f"{len(model_files)} shards",
                "size_mb": round(sum(_size_mb(path) for path in model_files), 3),
                "max_abs_logit_diff": None if name == "PyTorch fp32" else comparison.max_abs_diff,
                "accuracy": None if comparison.correct is None else comparison.correct / len(texts),
                "correct": comparison.correct,
                **{
                    f"examples_per_second_bs{size}": round(examples_per_second(run, timed), 1)
                    for size, timed in speed_batches.items()
                },
            }
        )
    fp32 = comparisons["ONNX fp32"]
    report = {
        "student_dir": str(student_dir),
        "output": str(output),
        "exporter": "torch.onnx.export(dynamo=True)",
        "inputs": names,
        "examples": len(texts),
        "examples_from": str(data) if data is not None else "built-in sentences",
        "max_length": max_length,
        "batch_size": batch_size,
        "speed_batches": SPEED_BATCHES,
        "torch_threads": threads,
        "tolerance": fp32.tolerance,
        "logits_agree": fp32.logits_agree,
        "accuracy_agrees": fp32.accuracy_agrees,
        "versions": _versions(),
        "models": rows,
    }
    (output / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    if not fp32.logits_agree:
        raise ParityError(
            f"ONNX fp32 logits differ from PyTorch by up to {fp32.max_abs_diff:.3g} (tolerance "
            f"{fp32.tolerance:.3g}); the export is wrong, do not deploy {output / ONNX_FILE}",
            report,
        )
    if not fp32.accuracy_agrees:
        raise ParityError(
            f"ONNX fp32 is right on {fp32.correct} examples of {len(texts)}, PyTorch on "
            f"{fp32.reference_correct}; more than {ACCURACY_SLACK} apart, do not deploy {output / ONNX_FILE}",
            report,
        )
    return report


def _versions() -> dict[str, str]:
    """Versions of the packages that made and ran the files."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")}


def results_table(report: dict[str, Any]) -> str:
    """The report's models side by side as a Markdown table."""
    batch_size = report["batch_size"]
    header = [
        "model",
        "file",
        "size (MB)",
        "max abs Δ logit",
        "accuracy",
        "ex/s (batch 1)",
        f"ex/s (batch {batch_size})",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["models"]:
        diff = "—" if row["max_abs_logit_diff"] is None else f"{row['max_abs_logit_diff']:.2e}"
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        cells = [
            row["name"],
            row["file"],
            f"{row['size_mb']:.2f}",
            diff,
            accuracy,
            f"{row['examples_per_second_bs1']:.1f}",
            f"{row[f'examples_per_second_bs{batch_size}']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
