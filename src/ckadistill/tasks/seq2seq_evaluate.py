"""Saved encoder-decoders side by side: generated scores, size and generation latency on one data split.

What `ckadistill evaluate --task summarization|translation` and the headline quickstart print:

    rows = evaluate_models(["teacher", "student"], DataArguments(task="summarization", test_file="test.csv"),
                           GenerationArguments(num_beams=4))
    print(results_table(rows))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ckadistill.config import DataArguments, GenerationArguments
from ckadistill.data import load_raw_splits
from ckadistill.metrics import count_parameters
from ckadistill.tasks.seq2seq import load_seq2seq_model
from ckadistill.tasks.seq2seq_data import forced_bos_token_id, prepare_tokenizer, seq2seq_texts
from ckadistill.tasks.seq2seq_metrics import generate, measure_generation_latency, task_scores

logger = logging.getLogger(__name__)


def evaluate_models(
    model_dirs: Sequence[str],
    data_args: DataArguments,
    generation_args: GenerationArguments,
    *,
    split: str = "test",
    latency_batch_size: int = 16,
    latency_new_tokens: int = 32,
    latency_examples: int = 32,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Scores, size and generation latency of saved encoder-decoders on one data split, one row per model.

    Scores: every source generated with `generation_args`, scored against the raw references. Latency:
    greedy generation of exactly `latency_new_tokens` tokens for each of the first `latency_examples`
    sources, at batch 1 and at `latency_batch_size` (`measure_generation_latency`), so every model does
    the same work.

    Returns:
        Rows with `name`, `path`, `parameters`, the task scores (`rouge1`, `rouge2`, `rougeL`,
        `rougeLsum`, or `bleu`, `chrf`), `ms_per_example_bs1`, `ms_per_example_bs{N}`,
        `tokens_per_second_bs{N}` (N = `latency_batch_size`), `latency_batch_size`,
        `latency_new_tokens`, `latency_examples`, `examples`, `torch_threads`, `device`.
    """
    from datasets import DatasetDict
    from transformers import AutoTokenizer

    if not model_dirs:
        raise ValueError("give at least one model directory to evaluate")
    for flag, value in (
        ("latency_batch_size", latency_batch_size),
        ("latency_new_tokens", latency_new_tokens),
        ("latency_examples", latency_examples),
    ):
        if value < 1:
            raise ValueError(f"--{flag} must be >= 1, got {value}")
    raw = load_raw_splits(data_args, require_train=False)
    if split not in raw:
        raise ValueError(f"--split {split} is not in the data; available splits: {', '.join(raw)}")
    raw = DatasetDict({split: raw[split]})
    sources, references = seq2seq_texts(raw, data_args, split)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for model_dir in model_dirs:
        model = load_seq2seq_model(model_dir, flag="MODEL_DIR", task=data_args.task).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prefix = prepare_tokenizer(tokenizer, model.config, data_args)
        bos = forced_bos_token_id(tokenizer, model.config, data_args)
        predictions = generate(
            model,
            tokenizer,
            sources,
            generation_args,
            prefix=prefix,
            max_source_length=data_args.max_source_length,
            forced_bos_token_id=bos,
        )
        timed = [prefix + s for s in sources[:latency_examples]]
        latency = {
            size: measure_generation_latency(
                model,
                tokenizer,
                timed,
                batch_size=size,
                new_tokens=latency_new_tokens,
                max_source_length=data_args.max_source_length,
            )
            for size in sorted({1, latency_batch_size})
        }
        n = latency_batch_size
        rows.append(
            {
                "name": Path(model_dir).name,
                "path": str(model_dir),
                "parameters": count_parameters(model),
                **task_scores(data_args.task, predictions, references),
                "ms_per_example_bs1": latency[1]["ms_per_example"],
                f"ms_per_example_bs{n}": latency[n]["ms_per_example"],
                f"tokens_per_second_bs{n}": latency[n]["tokens_per_second"],
                "latency_batch_size": n,
                "latency_new_tokens": latency_new_tokens,
                "latency_examples": len(timed),
                "examples": len(sources),
                "torch_threads": torch.get_num_threads(),
                "device": device,
            }
        )
        logger.info("Evaluated %s: %s", model_dir, rows[-1])
    return rows


# (row key, header, format) of the scores; only those some row has are shown.
SCORE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rouge1", "R-1", "{:.2f}"),
    ("rouge2", "R-2", "{:.2f}"),
    ("rougeL", "R-L", "{:.2f}"),
    ("rougeLsum", "R-Lsum", "{:.2f}"),
    ("bleu", "BLEU", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
)


def results_table(rows: Sequence[dict]) -> str:
    """A Markdown table of `evaluate_models` rows; compression and speed-up are relative to the first row.

    The relative score is R-2 for summarisation rows, BLEU for translation rows; speed-up is the first
    row's milliseconds per example at batch N over each row's.
    """
    if not rows:
        raise ValueError("results_table needs at least one row")
    ref, n = rows[0], rows[0]["latency_batch_size"]
    main = "rouge2" if "rouge2" in ref else "bleu"
    columns = [
        ("name", "model", "{}"),
        ("parameters", "parameters", "{:,}"),
        ("compression", "compression", "{:.2f}×"),
        *(c for c in SCORE_COLUMNS if any(c[0] in row for row in rows)),
        ("relative", f"{'R-2' if main == 'rouge2' else 'BLEU'} vs first", "{:.1%}"),
        ("ms_per_example_bs1", "ms/example (batch 1)", "{:.1f}"),
        (f"ms_per_example_bs{n}", f"ms/example (batch {n})", "{:.1f}"),
        (f"tokens_per_second_bs{n}", f"tokens/s (batch {n})", "{:.0f}"),
        ("speedup", f"speed-up (batch {n})", "{:.2f}×"),
    ]
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if key == "name" else "---:" for key, _, _ in columns) + "|")
    for row in rows:
        row = {
            **row,
            "compression": ref["parameters"] / row["parameters"],
            "relative": row.get(main, 0.0) / ref[main] if ref.get(main) else None,
            "speedup": ref[f"ms_per_example_bs{n}"] / row[f"ms_per_example_bs{n}"]
            if row.get(f"ms_per_example_bs{n}")
            else None,
        }
        cells = [fmt.format(row[k]) if row.get(k) is not None else "-" for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Scores on {ref['examples']:,} examples; latency: greedy generation of exactly "
        f"{ref['latency_new_tokens']} tokens for the first {ref['latency_examples']} examples (warm-up excluded) "
        f"on {ref['device']} with {ref['torch_threads']} torch threads; compression and speed-up relative to "
        f"{ref['name']}."
    )
    return "\n".join(lines)
