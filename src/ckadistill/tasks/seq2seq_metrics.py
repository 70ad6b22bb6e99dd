"""Summarisation and translation scores, and generation with encoder-decoder models.

Summarisation: ROUGE-1/2/L/Lsum F-measures (`rouge-score`, Porter stemming, ×100, averaged over
examples). Translation: corpus BLEU and chrF (`sacrebleu`, its default 13a tokenisation). Nothing here
downloads anything: ROUGE-Lsum's sentence splitting is a small regex splitter, not nltk's punkt.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

    from ckadistill.config import GenerationArguments

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Words that end with a full stop without ending a sentence ("Mr. Smith", "Jan. 5", "vs. Spain").
ABBREVIATIONS = frozenset(
    (  # noqa: SIM905 (a word list reads better as one string)
        "mr mrs ms dr prof st jr sr vs etc inc ltd co corp gen gov sen rep lt col sgt capt mt ft approx dept est "
        "fig jan feb mar apr jun jul aug sep sept oct nov dec"
    ).split()
)
# A run of sentence-final punctuation, any closing quotes or brackets, then whitespace.
_BOUNDARY = re.compile(r"""[.!?]+["'”’)\]]*(?=\s)""")


# ---------------------------------------------------------------------------------------------------
# Scores.
# ---------------------------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences, without downloaded models (a stand-in for nltk's punkt).

    A sentence ends at a line break, or at `.`, `!` or `?` (repeats, closing quotes and brackets
    included) followed by whitespace, whatever the case of the next word (uncased models write
    lowercase). A single `.` does not end a sentence after a known abbreviation ("Mr.", "Jan."), a
    single letter ("J. K. Rowling"), a word with inner full stops ("U.S.", "e.g.", "p.m."), or "No."
    before a number. Decimals ("3.5") never split: no whitespace follows their point.

    Returns:
        The stripped, non-empty sentences, in order.
    """
    sentences = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY.finditer(line):
            mark = match.group().rstrip("\"'”’)]")
            word = (
                line[start : match.start()].rsplit(None, 1)[-1] if line[start : match.start()].strip() else ""
            )
            following = line[match.end() :].lstrip()
            if mark == "." and (
                word.lower().strip("\"'“‘([") in ABBREVIATIONS
                or re.fullmatch(r"[\"'“‘(\[]?[A-Za-z]", word)
                or "." in word
                or (word.lower() == "no" and following[:1].isdigit())
            ):
                continue
            sentences.append(line[start : match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: they must pair up"
        )
    if not predictions:
        raise ValueError("no predictions to score")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures, ×100, averaged over the examples.

    `rouge_score.rouge_scorer.RougeScorer(use_stemmer=True)`, as the transformers summarization
    examples use it. ROUGE-L is the longest common subsequence of whole texts; ROUGE-Lsum the
    summary-level LCS over sentences, so both sides are split with `split_sentences` first.

    Args:
        predictions: `N` generated texts.
        references: `N` reference texts, `references[i]` for `predictions[i]`.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        pred = "\n".join(split_sentences(prediction))
        ref = "\n".join(split_sentences(reference))
        scores = scorer.score(ref, pred)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


def translation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (`sacrebleu.corpus_bleu` / `corpus_chrf`, defaults), both 0-100.

    Args:
        predictions: `N` translations.
        references: `N` reference translations (one reference per example).
    """
    import sacrebleu

    _check_pairs(predictions, references)
    predictions, references = list(predictions), [list(references)]  # sacrebleu: one list per reference set
    return {
        "bleu": float(sacrebleu.corpus_bleu(predictions, references).score),
        "chrf": float(sacrebleu.corpus_chrf(predictions, references).score),
    }


def task_scores(task: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`rouge_scores` for 'summarization', `translation_scores` for 'translation'."""
    if task == "summarization":
        return rouge_scores(predictions, references)
    if task == "translation":
        return translation_scores(predictions, references)
    raise ValueError(f"generated texts are scored for --task summarization or translation, got {task!r}")


def build_generation_compute_metrics(
    task: str, tokenizer: PreTrainedTokenizerBase
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `Seq2SeqTrainer` with `predict_with_generate=True`.

    Predictions (generated ids) and label ids are decoded without special tokens (-100 padding
    replaced by the pad id first) and stripped; the references are thus the tokenised, truncated
    targets. Adds `gen_len`: the mean number of non-padding tokens per generated sequence.
    """
    if task not in ("summarization", "translation"):
        raise ValueError(f"generation metrics need --task summarization or translation, got {task!r}")
    pad = tokenizer.pad_token_id

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        generated = prediction.predictions
        generated = generated[0] if isinstance(generated, tuple) else generated
        generated = np.where(generated != -100, generated, pad)  # (N, T_gen)
        labels = np.where(prediction.label_ids != -100, prediction.label_ids, pad)  # (N, T_label)
        predictions = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        references = [t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        scores = task_scores(task, predictions, references)
        scores["gen_len"] = float(np.mean(np.count_nonzero(generated != pad, axis=1)))
        return scores

    return compute_metrics


# ---------------------------------------------------------------------------------------------------
# Generation and its speed.
# ---------------------------------------------------------------------------------------------------


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    generation_args: GenerationArguments,
    *,
    prefix: str = "",
    max_source_length: int,
    forced_bos_token_id: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[str]:
    """Generate one output text per source, in order, in batches of `--generation_batch_size`.

    Args:
        model: an encoder-decoder model; put in eval mode for the call (its mode is restored after).
        tokenizer: prepared as for training (language codes set).
        sources: `N` source texts, without the prefix.
        generation_args: beams, length and repetition settings (`generate_kwargs()`).
        prefix: put before every source (as `prepare_tokenizer` returned it).
        max_source_length: sources are truncated to this many tokens.
        forced_bos_token_id: the target language code of mBART-50 / M2M100 / NLLB models
            (`forced_bos_token_id()`), else None.
        device: where to run (default: the model's device).
        progress: show a progress bar (callers with a bar of their own turn it off).

    Returns:
        `N` decoded texts, special tokens removed, stripped.
    """
    import torch
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    kwargs = generation_args.generate_kwargs()
    if forced_bos_token_id is not None:
        kwargs["forced_bos_token_id"] = forced_bos_token_id
    size = generation_args.generation_batch_size
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(sources), size), desc="Generating", unit="batch", disable=not progress
            ):
                texts = [prefix + s for s in sources[start : start + size]]
                batch = tokenizer(
                    texts,
                    max_length=max_source_length,
                    truncation=True,
                    padding=True,
                    return_token_type_ids=False,
                    return_tensors="pt",
                ).to(device)
                ids = model.generate(**batch, **kwargs)  # (b, T_out)
                outputs.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def measure_generation_latency(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    *,
    batch_size: int,
    new_tokens: int,
    max_source_length: int,
    warmup: int = 1,
) -> dict[str, float | int | str]:
    """Time greedy generation of exactly `new_tokens` tokens per source, on the model's device.

    Every model generates the same length (`min_new_tokens = max_new_tokens = new_tokens`, greedy, so
    end-of-sequence is suppressed until the last step): teacher and students are compared on equal
    work, not on how early each happens to stop. Tokenisation is outside the timing; the first
    `warmup` batches run once untimed, then every batch is timed.

    Args:
        sources: the source texts (prefixed as the model expects), split into batches of `batch_size`.
        new_tokens: generated tokens per example.
        max_source_length: sources are truncated to this many tokens.

    Returns:
        `ms_per_example`, `tokens_per_second` (generated tokens), `generated_tokens` (per example, as
        counted in the outputs), `examples`, `batch_size`, `new_tokens`, `device` and `torch_threads`.
    """
    import torch

    if not sources:
        raise ValueError("measure_generation_latency needs at least one source")
    if batch_size < 1 or new_tokens < 1:
        raise ValueError(f"batch_size and new_tokens must be >= 1, got {batch_size} and {new_tokens}")
    device = next(model.parameters()).device
    batches = [
        tokenizer(
            list(sources[start : start + batch_size]),
            max_length=max_source_length,
            truncation=True,
            padding=True,
            return_token_type_ids=False,
            return_tensors="pt",
        ).to(device)
        for start in range(0, len(sources), batch_size)
    ]
    # A checkpoint's generation config may add per-step work (bart-large-cnn: no_repeat_ngram_size=3);
    # switched off, so every model does the same work.
    kwargs = {
        "num_beams": 1,
        "do_sample": False,
        "min_new_tokens": new_tokens,
        "max_new_tokens": new_tokens,
        "no_repeat_ngram_size": 0,
        "repetition_penalty": 1.0,
    }
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches[:warmup]:
                model.generate(**batch, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            lengths = []
            start = time.perf_counter()
            for batch in batches:
                ids = model.generate(**batch, **kwargs)  # (b, T_start + new_tokens)
                lengths.append(ids.shape[1])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = max(time.perf_counter() - start, 1e-9)
    finally:
        model.train(was_training)
    # Encoder-decoder outputs start with the decoder start token; decoder-only ones with the prompt.
    prompt = [1 if model.config.is_encoder_decoder else b["input_ids"].shape[1] for b in batches]
    generated = {length - p for length, p in zip(lengths, prompt, strict=True)}
    if len(generated) != 1:
        raise RuntimeError(f"batches generated different lengths {sorted(generated)}; expected {new_tokens}")
    examples, count = len(sources), generated.pop()
    return {
        "batch_size": batch_size,
        "examples": examples,
        "new_tokens": new_tokens,
        "generated_tokens": count,
        "ms_per_example": 1000.0 * elapsed / examples,
        "tokens_per_second": examples * count / elapsed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
