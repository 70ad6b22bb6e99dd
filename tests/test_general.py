"""`--task general`: task-agnostic distillation of masked LMs and bare (sentence) encoders on raw text,
with tiny BERT models; the corpus reader (streaming, packing); the sentence-transformers round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from ckadistill.commands.distill import main
from ckadistill.config import DataArguments, DistillArguments, TaskTrainingArguments
from ckadistill.losses import kl_logits_loss
from ckadistill.tasks.general_data import encode_corpus, load_corpus, pack_documents, special_token_frame
from ckadistill.trainer import DistillationTrainer, model_kind
from conftest import SENTENCES

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tokenizer, hidden: int = 32, layers: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )


def save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_corpus(path: Path, lines: int = 40) -> Path:
    path.write_text("\n".join(SENTENCES[i % len(SENTENCES)] for i in range(lines)) + "\n", encoding="utf-8")
    return path


def make_sentence_encoder(tokenizer, folder: Path, *, hidden: int = 32, pooling: str = "mean") -> Path:
    """A tiny BertModel saved as a sentence-transformers folder (Transformer, Pooling, Normalize)."""
    torch.manual_seed(0)
    save(BertModel(tiny_config(tokenizer, hidden), add_pooling_layer=False), tokenizer, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}), encoding="utf-8")
    (folder / "1_Pooling").mkdir()
    pooling_config = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config), encoding="utf-8")
    return folder


def run_cli(args: list[str]) -> None:
    assert main(args) == 0


# ---------------------------------------------------------------------------------------------------
# The corpus: packing, truncation, streaming.
# ---------------------------------------------------------------------------------------------------


def test_pack_documents_frames_full_blocks_and_separates_documents():
    blocks = pack_documents([[1, 2, 3], [4, 5], [], [6, 7, 8, 9]], 6, [100], [101], separator=0, min_tokens=1)
    # stream 1 2 3 0 4 5 0 6 7 8 9 cut into bodies of 4 tokens, each framed by [100] ... [101]
    assert blocks == [[100, 1, 2, 3, 0, 101], [100, 4, 5, 0, 6, 101], [100, 7, 8, 9, 101]]
    # a short tail is dropped unless it is all there is
    assert pack_documents([[1, 2, 3, 4, 5]], 6, [100], [101], separator=0, min_tokens=2) == [
        [100, 1, 2, 3, 4, 101]
    ]
    assert pack_documents([[1]], 6, [100], [101], separator=0) == [[100, 1, 101]]
    with pytest.raises(ValueError, match="--max_length 2 leaves no room"):
        pack_documents([[1]], 2, [100], [101], separator=0)


def test_special_token_frame_reads_the_tokenizers_template(tokenizer):
    assert special_token_frame(tokenizer) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])


def test_encode_corpus_one_example_per_document_or_packed_blocks(tmp_path, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([*SENTENCES[:6], "", "   "]) + "\n", encoding="utf-8")
    args = DataArguments(task="general", train_file=str(corpus), validation_split_fraction=0.0, max_length=16)
    train, validation = load_corpus(args)
    assert validation is None
    plain = encode_corpus(train, tokenizer, args)
    assert len(plain) == 6  # blank lines dropped
    assert plain[0]["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]
    packed = encode_corpus(train, tokenizer, args, pack=True)
    lengths = [len(ids) for ids in packed["input_ids"]]
    assert all(n == 16 for n in lengths[:-1]) and lengths[-1] <= 16
    words = sum(len(s.split()) for s in SENTENCES[:6])
    content = sum(n - 2 for n in lengths)  # every block loses [CLS] and [SEP]
    assert content == words + 5  # the words, plus a [SEP] between consecutive documents
    assert all(
        ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in packed["input_ids"]
    )


def test_streaming_reads_only_what_it_needs(tmp_path):
    """A stream with a shuffle buffer smaller than the file yields rows without reading the file whole:
    the file's last line is broken JSON, which a full read rejects. (The reader parses blocks of about
    10 MB, so the file is made larger than one block: 24 MB.)"""
    path = tmp_path / "corpus.jsonl"
    rows = [
        json.dumps({"text": f"document number {i} of a corpus larger than memory", "id": i})
        for i in range(300_000)
    ]
    path.write_text("\n".join(rows) + '\n{"text": "broken\n', encoding="utf-8")
    args = DataArguments(
        task="general", train_file=str(path), streaming=True, shuffle_buffer=50, max_eval_samples=10
    )
    train, validation = load_corpus(args)
    assert type(train).__name__ == "IterableDataset"
    assert [row["id"] for row in validation] == list(range(10))  # the head of the stream, held out
    first = [row["id"] for _, row in zip(range(30), train, strict=False)]
    assert len(first) == 30 and min(first) >= 10  # no held-out row is trained on
    assert first != sorted(first)  # shuffled through the buffer
    assert max(first) < 1000  # drawn from the head of the 300,000 rows, through the small buffer
    with pytest.raises(Exception):  # noqa: B017 - the datasets JSON reader's own error
        load_corpus(DataArguments(task="general", train_file=str(path)))


def test_corpus_errors_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type '\.md' for --task general"):
        load_corpus(DataArguments(task="general", train_file=str(tmp_path / "x.md")))
    with pytest.raises(ValueError, match="--streaming reads raw text for --task general only"):
        DataArguments(streaming=True)
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("body\nsome text here\nmore text\n", encoding="utf-8")
    train, _ = load_corpus(
        DataArguments(task="general", train_file=str(csv_file), validation_split_fraction=0.0)
    )
    with pytest.raises(ValueError, match="--text_column 'text' is not a column of --train_file"):
        encode_corpus(train, None, DataArguments(task="general"))


# ---------------------------------------------------------------------------------------------------
# The loss terms of the two kinds.
# ---------------------------------------------------------------------------------------------------


def general_trainer(tmp_path, teacher, student, distill_args, **kwargs) -> DistillationTrainer:
    return DistillationTrainer(
        model=student,
        args=TaskTrainingArguments(output_dir=str(tmp_path / "out"), eval_strategy="no", use_cpu=True),
        teacher=teacher,
        distill_args=distill_args,
        layer_pairs=[(0, 0), (1, 2)],
        **kwargs,
    )


def batch(tokenizer, texts=SENTENCES[:4]):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


def test_masked_lm_kl_covers_every_real_token_of_unmasked_text(tmp_path, tokenizer):
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_config(tokenizer)).eval()
    student = BertForMaskedLM(tiny_config(tokenizer, hidden=16, layers=1)).eval()  # no dropout: comparable
    assert model_kind(teacher) == "mlm"
    trainer = general_trainer(tmp_path, teacher, student, DistillArguments(alpha_hidden=0.0))
    inputs = batch(tokenizer)
    loss = trainer.compute_loss(student, inputs)
    with torch.no_grad():
        expected = kl_logits_loss(
            student(**inputs).logits,
            teacher(**inputs).logits,
            inputs["attention_mask"].bool(),
            temperature=1.0,
        )
    torch.testing.assert_close(loss, expected)  # no CE on unmasked text: the task term is off


def test_masked_lm_with_labels_adds_ce_at_the_masked_positions(tmp_path, tokenizer):
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_config(tokenizer)).eval()
    student = BertForMaskedLM(tiny_config(tokenizer, hidden=16, layers=1)).eval()
    trainer = general_trainer(tmp_path, teacher, student, DistillArguments(alpha_hidden=0.0, alpha_kd=0.0))
    inputs = batch(tokenizer)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 1] = inputs["input_ids"][:, 1]  # one masked position per row
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][:, 1] = tokenizer.mask_token_id
    loss = trainer.compute_loss(student, {**inputs, "labels": labels})
    with torch.no_grad():
        logits = student(**inputs).logits[:, 1]
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels[:, 1]))


def test_bare_encoder_pooled_term_cosine_at_equal_width_cka_otherwise(tmp_path, tokenizer):
    torch.manual_seed(0)
    teacher = BertModel(tiny_config(tokenizer), add_pooling_layer=False).eval()
    assert model_kind(teacher) == "encoder"
    no_hidden = DistillArguments(hidden_loss="none", alpha_kd=0.0)
    same = general_trainer(tmp_path, teacher, teacher, no_hidden)
    assert same.pooled_loss == "cosine"
    assert float(same.compute_loss(teacher, batch(tokenizer))) == pytest.approx(0.0, abs=1e-5)
    narrow = BertModel(tiny_config(tokenizer, hidden=16, layers=1), add_pooling_layer=False)
    trainer = general_trainer(tmp_path, teacher, narrow, no_hidden)
    assert trainer.pooled_loss == "cka"
    loss = trainer.compute_loss(narrow, batch(tokenizer))
    assert 0.0 < loss.item() < 1.0
    loss.backward()
    assert narrow.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="--pooled_loss cosine needs equal widths"):
        general_trainer(tmp_path, teacher, narrow, DistillArguments(pooled_loss="cosine"))
    with pytest.raises(ValueError, match="no loss term applies to this encoder student"):
        general_trainer(tmp_path, teacher, narrow, DistillArguments(hidden_loss="none", pooled_loss="none"))
    with pytest.raises(
        ValueError, match=r"the teacher is a BertModel \(encoder\) and the student a BertForMaskedLM"
    ):
        general_trainer(tmp_path, teacher, BertForMaskedLM(tiny_config(tokenizer)), no_hidden)


# ---------------------------------------------------------------------------------------------------
# End to end through the CLI.
# ---------------------------------------------------------------------------------------------------


def test_distill_general_masked_lm_end_to_end(tmp_path, tokenizer):
    torch.manual_seed(0)
    teacher = save(BertForMaskedLM(tiny_config(tokenizer)), tokenizer, tmp_path / "teacher")
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "student"
    common = ["--task", "general", "--teacher", str(teacher), "--train_file", str(corpus)]
    common += [
        "--student_layers",
        "1",
        "--student_hidden_size",
        "16",
        "--max_steps",
        "3",
        "--logging_steps",
        "1",
    ]
    run_cli([*common, "--output_dir", str(out), "--pack_sequences", "true", "--max_length", "24"])
    student = BertForMaskedLM.from_pretrained(out)
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 1
    assert not list(out.glob("*projection*"))
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_loss", "eval_pooled_cka", "eval_similarity_spearman"} <= set(results)
    logged = {
        k for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] for k in entry
    }
    assert {"loss/kd", "loss/hidden", "cka/enc_1_2"} <= logged and "loss/task" not in logged
    card = (out / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "every real token (unmasked text)" in card
    masked = tmp_path / "masked"
    run_cli([*common, "--output_dir", str(masked), "--mlm_probability", "0.3", "--alpha_task", "0.5"])
    logged = {
        k for entry in json.loads((masked / "trainer_state.json").read_text())["log_history"] for k in entry
    }
    assert {"loss/task", "loss/kd"} <= logged
    assert "30% masked positions" in (masked / "README.md").read_text()


def test_distill_general_sentence_encoder_round_trip(tmp_path, tokenizer):
    from sentence_transformers import SentenceTransformer

    teacher = make_sentence_encoder(tokenizer, tmp_path / "teacher")
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "student"
    run_cli(
        [
            "--task", "general", "--teacher", str(teacher), "--train_file", str(corpus), "--output_dir", str(out),
            "--student_layers", "1", "--student_hidden_size", "16", "--student_init", "pca",
            "--max_steps", "3", "--report_to", "none",
        ]
    )  # fmt: skip
    model = SentenceTransformer(str(out), device="cpu")
    vectors = model.encode(SENTENCES[:3], convert_to_tensor=True)
    assert vectors.shape == (3, 16)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))  # the teacher's Normalize module kept
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 16
    card = (out / "README.md").read_text()
    assert "pipeline_tag: sentence-similarity" in card and "SentenceTransformer(" in card
    assert "sentence vectors" in card
    results = json.loads((out / "all_results.json").read_text())
    assert -1.0 <= results["eval_similarity_spearman"] <= 1.0 and 0.0 <= results["eval_pooled_cka"] <= 1.0


def test_distill_general_refuses_what_it_cannot_do(tmp_path, tokenizer, capsys):
    from transformers import BertForSequenceClassification

    classifier = save(
        BertForSequenceClassification(tiny_config(tokenizer)), tokenizer, tmp_path / "classifier"
    )
    corpus = write_corpus(tmp_path / "corpus.txt")
    base = [
        "--task",
        "general",
        "--train_file",
        str(corpus),
        "--student_layers",
        "1",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--teacher", str(classifier)]) == 2
    assert "use --task classification for it" in capsys.readouterr().err
    encoder = make_sentence_encoder(tokenizer, tmp_path / "encoder")
    assert main([*base, "--teacher", str(encoder), "--streaming", "true"]) == 2
    assert "--streaming corpora have no length, so the run needs --max_steps" in capsys.readouterr().err
    assert main([*base, "--teacher", str(encoder), "--mlm_probability", "0.15"]) == 2
    assert "this teacher has no MLM head: set --mlm_probability 0" in capsys.readouterr().err


def test_a_general_student_starts_task_distillation_and_keeps_its_provenance(tmp_path, tokenizer):
    from transformers import AutoConfig

    from test_distill_cli import TOPICS, tiny_bert, topic_rows, write_csv

    encoder = make_sentence_encoder(tokenizer, tmp_path / "encoder")
    corpus = write_corpus(tmp_path / "corpus.txt")
    general = tmp_path / "general"
    run_cli(
        [
            "--task", "general", "--teacher", str(encoder), "--train_file", str(corpus), "--output_dir", str(general),
            "--student_layers", "1", "--student_hidden_size", "16", "--max_steps", "2",
        ]
    )  # fmt: skip
    classifier = save(tiny_bert(tokenizer, labels=sorted(set(TOPICS))), tokenizer, tmp_path / "classifier")
    data = write_csv(tmp_path / "train.csv", ["text", "label"], topic_rows())
    task = tmp_path / "task"
    run_cli(
        [
            "--teacher", str(classifier), "--student", str(general), "--train_file", str(data),
            "--output_dir", str(task), "--max_steps", "2", "--eval_strategy", "no", "--max_length", "24",
        ]
    )  # fmt: skip
    provenance = AutoConfig.from_pretrained(task).ckadistill
    assert provenance["stage"] == "task" and provenance["started_from"] == str(general)
    earlier = provenance["earlier_stage"]
    assert (
        earlier["stage"] == "general"
        and earlier["teacher"] == str(encoder)
        and earlier["corpus"] == str(corpus)
    )
    assert earlier["init"] == "slice"  # make-student's own record survives both stages
    card = (task / "README.md").read_text()
    assert '"earlier_stage"' in card and '"stage": "general"' in card


# ---------------------------------------------------------------------------------------------------
# Encoder-decoders: reconstruction, text infilling, span corruption.
# ---------------------------------------------------------------------------------------------------


def test_noise_span_mask_has_the_asked_density_and_alternates():
    import random

    from ckadistill.tasks.general_data import noise_span_mask

    rng = random.Random(0)
    for length in (2, 5, 20, 100):
        mask = noise_span_mask(length, 0.15, 3.0, rng)
        assert len(mask) == length and not mask[0]  # starts with a kept span
        assert sum(mask) == min(max(1, round(length * 0.15)), length - 1)
        starts = sum(1 for i, m in enumerate(mask) if m and not mask[i - 1])
        assert starts == max(1, min(round(sum(mask) / 3.0), sum(mask), length - sum(mask)))
    assert noise_span_mask(1, 0.5, 3.0, rng) == [False]


def test_span_corruption_and_infilling_keep_every_token_recoverable():
    from ckadistill.tasks.general_data import span_corruption, text_infilling

    ids = [10, 11, 12, 13, 14, 15, 16]
    mask = [False, True, True, False, False, True, False]
    inputs, targets = span_corruption(ids, [90, 91, 92], mask)
    assert inputs == [10, 90, 13, 14, 91, 16]
    assert targets == [90, 11, 12, 91, 15]
    assert text_infilling(ids, 99, mask) == [10, 99, 13, 14, 99, 16]
    with pytest.raises(ValueError, match="more than the tokenizer's 1 sentinel tokens"):
        span_corruption(ids, [90], mask)


def t5_tokenizer(sentinels: int = 8):
    from test_seq2seq_cli import seq2seq_tokenizer

    tokenizer = seq2seq_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(sentinels)]})
    return tokenizer


def test_denoising_collator_frames_and_pads_each_objective():
    from ckadistill.tasks.general_data import DenoisingCollator

    tokenizer = t5_tokenizer()
    features = [dict(tokenizer(text)) for text in SENTENCES[:3]]
    eos = tokenizer.eos_token_id
    plain = DenoisingCollator(tokenizer, "reconstruction")(features)
    assert torch.equal(plain["input_ids"].masked_fill(plain["attention_mask"] == 0, -100), plain["labels"])
    corrupted = DenoisingCollator(tokenizer, "span_corruption", density=0.3, seed=1)(features)
    sentinels = set(tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(8)]))
    for row, labels, feature in zip(corrupted["input_ids"], corrupted["labels"], features, strict=True):
        source = [t for t in row.tolist() if t != tokenizer.pad_token_id]
        target = [t for t in labels.tolist() if t != -100]
        assert source[-1] == eos and target[-1] == eos  # the tokenizer's frame survives
        assert target[0] in sentinels and set(source) & sentinels
        # put the spans back where their sentinels are: the original text
        spans, current = {}, None
        for t in target[:-1]:
            if t in sentinels:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        rebuilt = [t for s in source for t in (spans[s] if s in sentinels else [s])]
        assert rebuilt == feature["input_ids"]
    infilled = DenoisingCollator(tokenizer, "infilling", density=0.3)(features)
    assert torch.equal(infilled["labels"], plain["labels"])  # the clean text is the target
    assert (infilled["input_ids"] == tokenizer.mask_token_id).any(dim=1).all()
    assert (
        infilled["attention_mask"].sum(1) < plain["attention_mask"].sum(1)
    ).all()  # spans became one token
    with pytest.raises(ValueError, match="sentinel tokens"):
        from test_seq2seq_cli import seq2seq_tokenizer

        DenoisingCollator(seq2seq_tokenizer(), "span_corruption")


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_distill_general_encoder_decoder_end_to_end(tmp_path, family):
    from transformers import AutoModelForSeq2SeqLM

    from test_seq2seq_cli import tiny_bart
    from test_trainer_seq2seq import t5

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    model = tiny_bart() if family == "bart" else t5(32, 4, vocab=len(tokenizer))
    if family == "bart":
        model.resize_token_embeddings(len(tokenizer))
    teacher = save(model, tokenizer, tmp_path / "teacher")
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "student"
    run_cli(
        [
            "--task", "general", "--teacher", str(teacher), "--train_file", str(corpus), "--output_dir", str(out),
            "--student_layers", "2", "--student_hidden_size", "16",  # both stacks of an encoder-decoder
            "--max_steps", "3", "--logging_steps", "1",
        ]
    )  # fmt: skip
    student = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert student.config.d_model == 16
    logged = {
        k for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] for k in entry
    }
    assert {"loss/task", "loss/kd", "loss/hidden", "cka/enc_1_2", "cka/dec_1_2"} <= logged
    assert "eval_loss" in json.loads((out / "all_results.json").read_text())
    card = (out / "README.md").read_text()
    objective = "span_corruption" if family == "t5" else "reconstruction"
    assert f"on {objective}" in card and "pipeline_tag: text2text-generation" in card
    assert json.loads((out / "layer_map.json").read_text())["decoder"] == "0:0,1:2,2:4"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_bare_encoder_teacher_can_be_cached(tmp_path, tokenizer, pooling):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from ckadistill.teacher_cache import EXAMPLE_ID

    def quiet(hidden, layers, seed):
        torch.manual_seed(seed)
        config = tiny_config(tokenizer, hidden, layers)
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
        return BertModel(config, add_pooling_layer=False)

    rows = tokenizer(list(SENTENCES))
    data = Dataset.from_dict({"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]})

    def trainer(cache: bool) -> DistillationTrainer:
        return DistillationTrainer(
            model=quiet(16, 1, 1),
            args=TaskTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True),
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tokenizer),
            teacher=quiet(32, 2, 0),
            distill_args=DistillArguments(cache_teacher=cache, layer_map="0:0"),
            layer_pairs=[(0, 0)],
            pooling=pooling,
        )

    cached, live = trainer(True), trainer(False)
    assert cached.teacher_cache.layers == (
        0,
        2,
    )  # the mapped layer, and the last one for the sentence vectors
    batch = DataCollatorWithPadding(tokenizer)([cached.train_dataset[i] for i in (6, 1, 3, 0)])
    cached.model.train()
    live.model.train()
    loss = cached.compute_loss(cached.model, dict(batch))
    expected = live.compute_loss(live.model, {k: v for k, v in batch.items() if k != EXAMPLE_ID})
    torch.testing.assert_close(loss, expected, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="--cache_teacher would hold a masked LM's logits"):
        general_trainer(
            tmp_path,
            BertForMaskedLM(tiny_config(tokenizer)),
            BertForMaskedLM(tiny_config(tokenizer)),
            DistillArguments(cache_teacher=True),
        )


def test_distill_general_from_a_stream(tmp_path, tokenizer):
    teacher = make_sentence_encoder(tokenizer, tmp_path / "teacher")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"body": s}) for s in SENTENCES * 8) + "\n", encoding="utf-8")
    out = tmp_path / "student"
    run_cli(
        [
            "--task", "general", "--teacher", str(teacher), "--train_file", str(corpus), "--text_column", "body",
            "--streaming", "true", "--shuffle_buffer", "16", "--max_eval_samples", "6", "--max_steps", "4",
            "--per_device_train_batch_size", "4", "--output_dir", str(out), "--student_layers", "1",
            "--student_hidden_size", "16", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2",
        ]
    )  # fmt: skip
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert sum("eval_loss" in entry for entry in state["log_history"]) >= 2  # evaluated on the stream's head
    assert "streamed: `True`" in (out / "README.md").read_text()
