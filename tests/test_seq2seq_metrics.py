"""Seq2seq scores against hand-computed values, the sentence splitter, and generation on a tiny BART."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, EvalPrediction

from ckadistill.config import GenerationArguments
from ckadistill.tasks.seq2seq_metrics import (
    build_generation_compute_metrics,
    generate,
    measure_generation_latency,
    rouge_scores,
    split_sentences,
    task_scores,
    translation_scores,
)
from conftest import SENTENCES

# ---------------------------------------------------------------------------------------------------
# Sentence splitting.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        (
            "Mr. Smith went to Washington. He arrived at 3.30 p.m. on Monday.",
            ["Mr. Smith went to Washington.", "He arrived at 3.30 p.m. on Monday."],
        ),
        ('He said "stop!" Then he left.', ['He said "stop!"', "Then he left."]),
        (
            "J. K. Rowling wrote it. The U.S. edition sold 2.5m copies",
            ["J. K. Rowling wrote it.", "The U.S. edition sold 2.5m copies"],
        ),
        ("the cat sat. the dog ran? yes!! no", ["the cat sat.", "the dog ran?", "yes!!", "no"]),
        ("See No. 10 for details. No. That is wrong.", ["See No. 10 for details.", "No.", "That is wrong."]),
        (
            "Prices rose (e.g. bread) in Jan. last year. Then fell.",
            ["Prices rose (e.g. bread) in Jan. last year.", "Then fell."],
        ),
        ("line one\n\nline two. three", ["line one", "line two.", "three"]),
        ("  ", []),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


# ---------------------------------------------------------------------------------------------------
# ROUGE, BLEU, chrF.
# ---------------------------------------------------------------------------------------------------


def test_rouge_identical_texts_score_100():
    texts = ["The cat sat on the mat. It purred.", "Shares rose today"]
    assert rouge_scores(texts, texts) == pytest.approx(
        dict.fromkeys(["rouge1", "rouge2", "rougeL", "rougeLsum"], 100.0)
    )


def test_rouge_partial_overlap_by_hand():
    # prediction "the cat sat on the mat", reference "the cat was on the mat": 5 of 6 unigrams match
    # (P = R = 5/6); bigrams: the-cat, on-the, the-mat of 5 (3/5); the LCS "the cat on the mat" has 5.
    scores = rouge_scores(["the cat sat on the mat"], ["the cat was on the mat"])
    assert scores == pytest.approx(
        {"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6, "rougeLsum": 500 / 6}
    )


def test_rouge_is_a_mean_over_examples_and_stems():
    # "running dogs" vs "run dog": the Porter stemmer makes both words match.
    scores = rouge_scores(["running dogs", "alpha beta"], ["run dog", "gamma delta"])
    assert scores["rouge1"] == pytest.approx(50.0) and scores["rouge2"] == pytest.approx(50.0)


def test_rouge_lsum_sees_the_sentences():
    # Swapped sentences: one LCS over the whole text matches 3 of 6 words, the summary-level LCS all.
    prediction, reference = "The dog ran. The cat sat.", "The cat sat. The dog ran."
    scores = rouge_scores([prediction], [reference])
    assert scores["rougeL"] == pytest.approx(50.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_bleu_and_chrf_by_hand():
    same = ["the cat sat on the mat", "a quick brown fox"]
    assert translation_scores(same, same) == pytest.approx({"bleu": 100.0, "chrf": 100.0})
    # Every n-gram of the prediction is in the reference; only the brevity penalty exp(1 - 7/6) applies.
    bleu = translation_scores(["the cat sat on the mat"], ["the cat sat on the mat today"])["bleu"]
    assert bleu == pytest.approx(100 * math.exp(1 - 7 / 6))
    # chrF (beta 2) of "cat" against "cats": char 1/2/3-grams have precision 1 and recall 3/4, 2/3, 1/2;
    # averaged P = 1, R = 23/36, F = 5·P·R / (4·P + R) = 115/167.
    chrf = translation_scores(["cat"], ["cats"])["chrf"]
    assert chrf == pytest.approx(100 * 115 / 167)
    assert translation_scores(["xyz"], ["abc"]) == pytest.approx({"bleu": 0.0, "chrf": 0.0})


def test_task_scores_dispatch_and_errors():
    assert set(task_scores("summarization", ["a b"], ["a b"])) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert set(task_scores("translation", ["a b"], ["a b"])) == {"bleu", "chrf"}
    with pytest.raises(ValueError, match="--task summarization or translation"):
        task_scores("classification", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_scores(["a", "b"], ["a"])


def test_generation_compute_metrics_decodes_and_unpads(tokenizer):
    predictions = ["the market rose today", "the team won"]
    references = ["the market rose", "the team won the match"]

    def padded(texts, pad_value):
        ids = [tokenizer(t)["input_ids"] for t in texts]
        width = max(map(len, ids))
        return np.array([row + [pad_value] * (width - len(row)) for row in ids])

    generated = padded(predictions, -100)  # (2, 6); Seq2SeqTrainer pads across batches with -100
    generated[1, -1] = tokenizer.pad_token_id  # and within a batch with the pad id
    compute = build_generation_compute_metrics("summarization", tokenizer)
    scores = compute(EvalPrediction(predictions=generated, label_ids=padded(references, -100)))
    expected = rouge_scores(predictions, references)
    assert {k: scores[k] for k in expected} == pytest.approx(expected)
    # [CLS] + words + [SEP] without any padding: (6 + 5) / 2
    assert scores["gen_len"] == pytest.approx(5.5)
    with pytest.raises(ValueError, match="--task"):
        build_generation_compute_metrics("regression", tokenizer)


# ---------------------------------------------------------------------------------------------------
# Generation on a tiny random BART.
# ---------------------------------------------------------------------------------------------------


def tiny_bart(tokenizer, seed: int = 0, d_model: int = 16) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    return BartForConditionalGeneration(config).eval()


def test_generate_returns_one_string_per_source_in_order(tokenizer, one_thread):
    model = tiny_bart(tokenizer).train()
    args = GenerationArguments(max_new_tokens=5, generation_batch_size=2)
    # Sources truncated to 6 tokens need no padding, so batching cannot change the outputs.
    outputs = generate(model, tokenizer, SENTENCES[:5], args, max_source_length=6)
    assert len(outputs) == 5 and all(isinstance(t, str) for t in outputs)
    single = GenerationArguments(max_new_tokens=5, generation_batch_size=1)
    assert outputs == [generate(model, tokenizer, [s], single, max_source_length=6)[0] for s in SENTENCES[:5]]
    assert model.training  # the mode is restored


def test_generate_forces_the_first_token(tokenizer, one_thread):
    model = tiny_bart(tokenizer)
    market = tokenizer.convert_tokens_to_ids("market")
    args = GenerationArguments(max_new_tokens=4, num_beams=2, generation_batch_size=4)
    outputs = generate(
        model, tokenizer, SENTENCES[:3], args, max_source_length=16, forced_bos_token_id=market
    )
    assert all(t.split()[0] == "market" for t in outputs)


def test_latency_forces_equal_lengths(tokenizer, one_thread):
    eager = tiny_bart(tokenizer, seed=1, d_model=32)
    with torch.no_grad():
        eager.final_logits_bias[0, tokenizer.eos_token_id] = 1e4  # wants to stop at once
    plain = generate(
        eager, tokenizer, SENTENCES[:2], GenerationArguments(max_new_tokens=8), max_source_length=16
    )
    assert plain == ["", ""]  # without the forcing it would stop at once

    for model in (tiny_bart(tokenizer), eager):
        result = measure_generation_latency(
            model, tokenizer, SENTENCES[:4], batch_size=2, new_tokens=7, max_source_length=16
        )
        assert result["generated_tokens"] == 7
        assert result["examples"] == 4 and result["batch_size"] == 2 and result["torch_threads"] == 1
        assert result["ms_per_example"] > 0 and result["tokens_per_second"] > 0
        assert result["device"] == "cpu"
