"""Model cards (README.md) for fine-tuned teachers and distilled students.

A card says what the model is (shape, size, compression against its teacher), how it was made (the
loss, its weights, the layer map, the data, the training settings, the student's provenance), how
well it does (every evaluation metric) and how to use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ckadistill.families import FAMILIES, get_family, num_decoder_layers, num_encoder_layers, read_field
from ckadistill.metrics import count_parameters

logger = logging.getLogger(__name__)


def model_shape(model) -> dict[str, Any]:
    """Parameters, layers, width, FFN size and heads of an encoder, read through the family table.

    Encoder-decoders add `decoder_layers` (`layers` is then the encoder's). Model types outside the
    table (a fine-tuned teacher of another family) show only their size.
    """
    config = model.config
    if config.model_type not in FAMILIES:
        return {"model_type": config.model_type, "parameters": count_parameters(model)}
    family = get_family(config)
    shape = {
        "model_type": config.model_type,
        "parameters": count_parameters(model),
        "layers": num_encoder_layers(config),
        "hidden_size": int(read_field(config, family.width)),
        "ffn_size": int(read_field(config, family.ffn_field(0))),
        "heads": int(read_field(config, family.heads_field(0))),
    }
    if family.is_encoder_decoder:
        shape["decoder_layers"] = num_decoder_layers(config)
    return shape


def _metrics_table(metrics: Mapping[str, float]) -> list[str]:
    """Evaluation metrics as `| split | metric | value |` rows (runtime figures left out)."""
    skip = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    rows = []
    for key, value in sorted(metrics.items()):
        split, _, name = key.partition("_")
        if split not in ("eval", "test", "teacher") or any(s in name for s in skip):
            continue
        if not isinstance(value, (int, float)):
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        label = {"eval": "validation"}.get(split, split)
        if split == "teacher":  # teacher_eval_accuracy -> teacher (validation) / accuracy
            inner, _, name = name.partition("_")
            label = f"teacher ({ {'eval': 'validation'}.get(inner, inner) })"
        rows.append(f"| {label} | {name} | {shown} |")
    if not rows:
        return ["No evaluation split was given, so there are no metrics."]
    return ["| split | metric | value |", "|---|---|---:|", *rows]


def _shape_table(shapes: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    header = "| | " + " | ".join(name for name, _ in shapes) + " |"
    lines = [header, "|---|" + "---:|" * len(shapes)]
    seq2seq = any("decoder_layers" in shape for _, shape in shapes)
    rows = [("parameters", "parameters"), ("layers", "encoder layers" if seq2seq else "layers")]
    rows += [("decoder_layers", "decoder layers")] if seq2seq else []
    for key, label in (
        *rows,
        ("hidden_size", "hidden size"),
        ("ffn_size", "FFN size"),
        ("heads", "attention heads"),
    ):
        cells = [
            f"{shape[key]:,}" if key == "parameters" else str(shape.get(key, "-")) for _, shape in shapes
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _vocabulary_lines(info: Mapping[str, Any]) -> list[str]:
    """The Vocabulary section of a student trimmed with `--trim_vocab` (`ckadistill.vocab.trim_student`)."""
    kept = ", ".join(f"{n:,} {reason}" for reason, n in info["kept_by"].items() if n)
    return [
        "",
        "## Vocabulary",
        "",
        f"Trimmed to the training texts (`--trim_vocab`): {info['old_vocab_size']:,} -> "
        f"{info['new_vocab_size']:,} tokens, {info['old_parameters']:,} -> {info['new_parameters']:,} "
        "parameters. The student reads and emits only the kept tokens; during distillation the teacher read "
        "the same tokens by its own ids.",
        "",
        f"- kept: {kept}",
        f"- `--trim_min_count`: `{info['min_count']}`, `--trim_keep_top`: `{info['keep_top']}`",
        f"- tokenizer model: `{info['tokenizer_model']}`",
        f"- coverage: {info['coverage']:.2%} of {info['coverage_tokens']:,} tokens of the "
        f"{info['coverage_on']} tokenise exactly as with the teacher's tokenizer",
    ]


def write_model_card(
    output_dir: str | Path,
    *,
    model,
    title: str,
    summary: str,
    metrics: Mapping[str, float],
    labels: Sequence[str] | None,
    data: Mapping[str, Any],
    training: Mapping[str, Any],
    teacher=None,
    teacher_name: str | None = None,
    distillation: Mapping[str, Any] | None = None,
    pipeline_tag: str = "text-classification",
    usage: Sequence[str] | None = None,
    vocabulary: Mapping[str, Any] | None = None,
) -> Path:
    """Write `README.md` into `output_dir` and return its path.

    Args:
        model: the saved model (its shape and `config.ckadistill` provenance are read).
        title, summary: heading and first paragraph.
        metrics: flat metric dictionary (`eval_*`, `test_*`, `teacher_eval_*`, ... keys).
        labels: class names in id order (empty for regression); None for models without labels
            (summarization, translation).
        data, training: settings shown as bullet lists (e.g. data files, learning rate).
        teacher, teacher_name: the teacher model and its name, for distilled students.
        distillation: loss settings (weights, temperature, hidden loss, layer map), for students.
        pipeline_tag: the Hub task tag in the card's metadata.
        usage: lines of Python for the Usage section (default: a text-classification pipeline).
        vocabulary: the `trim_vocab` record of a student with a trimmed vocabulary (sizes, rules,
            coverage), for its Vocabulary section.
    """
    shape = model_shape(model)
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        "- ckadistill",
        *(["- knowledge-distillation", "- cka"] if distillation is not None else []),
        "---",
        "",
        f"# {title}",
        "",
        summary,
        "",
        "## Results",
        "",
        *_metrics_table(metrics),
        "",
        "## Model",
        "",
    ]
    if teacher is not None:
        teacher_shape = model_shape(teacher)
        lines += _shape_table([("teacher", teacher_shape), ("student", shape)])
        compression = teacher_shape["parameters"] / shape["parameters"]
        lines += ["", f"Compression: {compression:.2f}× fewer parameters than the teacher `{teacher_name}`."]
    else:
        lines += _shape_table([("model", shape)])
    if labels is not None:
        lines += [
            "",
            "Labels: " + (", ".join(f"`{name}`" for name in labels) if labels else "regression (one output)"),
        ]
    if distillation is not None:
        lines += ["", "## Distillation", ""]
        lines += [f"- {key}: `{value}`" for key, value in distillation.items()]
    if vocabulary is not None:
        lines += _vocabulary_lines(vocabulary)
    lines += ["", "## Data", ""]
    lines += [f"- {key}: `{value}`" for key, value in data.items() if value is not None]
    lines += ["", "## Training", ""]
    lines += [f"- {key}: `{value}`" for key, value in training.items() if value is not None]
    provenance = model.config.to_dict().get("ckadistill")
    if provenance:
        lines += ["", "## Provenance", "", "```json", json.dumps(provenance, indent=2, default=str), "```"]
    if usage is None:
        usage = [
            "from transformers import pipeline",
            "",
            'classifier = pipeline("text-classification", model="path/to/this/folder")',
            'print(classifier("a sentence to classify"))',
        ]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        *usage,
        "```",
        "",
        "Made with ckadistill (hidden-state distillation with Centered Kernel Alignment, "
        "Dasgupta & Cohn, ICLR 2025).",
        "",
    ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("Model card written to %s", path)
    return path
