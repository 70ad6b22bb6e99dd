"""DistillationTrainer on encoder-decoder LMs: tiny BART, mBART, Marian, T5 and bert2bert built from configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertLMHeadModel,
    BertModel,
    DataCollatorForSeq2Seq,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import Seq2SeqLMOutput

from ckadistill.config import DistillArguments, TaskTrainingArguments
from ckadistill.losses import gram_cka, linear_cka, mean_pool
from ckadistill.teacher_cache import EXAMPLE_ID, TeacherCache
from ckadistill.trainer import DistillationTrainer, target_mask
from conftest import build_tokenizer
from test_distill_cli import tiny_bert
from test_teacher_cache import assert_cached_loss_is_live

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENIZER = build_tokenizer()
V, PAD, BOS, EOS = len(TOKENIZER), TOKENIZER.pad_token_id, TOKENIZER.bos_token_id, TOKENIZER.eos_token_id
FIRST_WORD = 7  # ids below are special tokens
PAIRS = [(0, 0), (1, 2), (2, 4)]  # 2-layer student, 4-layer teacher, both stacks


# ---- tiny models and data -----------------------------------------------------------------------


def bart_like(config_cls, model_cls, width: int, layers: int, vocab: int = V):
    config = config_cls(
        vocab_size=vocab,
        d_model=width,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        max_position_embeddings=64,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    return model_cls(config)


def t5(width: int, layers: int, vocab: int = V):
    config = T5Config(
        vocab_size=vocab,
        d_model=width,
        d_kv=width // 4,
        d_ff=2 * width,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(config)


def bert2bert(width: int, layers: int, vocab: int = V):
    shape = dict(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    encoder, decoder = BertConfig(**shape), BertConfig(**shape, is_decoder=True, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.pad_token_id, config.decoder_start_token_id = PAD, BOS
    return EncoderDecoderModel(encoder=BertModel(encoder), decoder=BertLMHeadModel(decoder), config=config)


BUILDERS = {
    "bart": lambda w, n, **kw: bart_like(BartConfig, BartForConditionalGeneration, w, n, **kw),
    "mbart": lambda w, n, **kw: bart_like(MBartConfig, MBartForConditionalGeneration, w, n, **kw),
    "marian": lambda w, n, **kw: bart_like(MarianConfig, MarianMTModel, w, n, **kw),
    "t5": t5,
    "bert2bert": bert2bert,
}


def models(family: str, *, student_width: int = 16, student_vocab: int = V):
    """A 4+4-layer teacher of width 32 and a 2+2-layer student, randomly initialised."""
    torch.manual_seed(0)
    teacher = BUILDERS[family](32, 4)
    torch.manual_seed(1)
    student = BUILDERS[family](student_width, 2, vocab=student_vocab)
    return teacher, student


def rows(n: int = 6, seed: int = 0) -> Dataset:
    """Random sources of 4..9 tokens and targets of 2..6 tokens (padded with -100 by the collator)."""
    g = torch.Generator().manual_seed(seed)
    source_lengths, target_lengths = [4 + (i * 5) % 6 for i in range(n)], [2 + (i * 3) % 5 for i in range(n)]
    sources = [torch.randint(FIRST_WORD, V, (k,), generator=g).tolist() for k in source_lengths]
    targets = [torch.randint(FIRST_WORD, V, (k,), generator=g).tolist() for k in target_lengths]
    return Dataset.from_dict(
        {"input_ids": sources, "attention_mask": [[1] * len(s) for s in sources], "labels": targets}
    )


def training_args(tmp_path, **overrides) -> TaskTrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=3,
        use_cpu=True,
        eval_strategy="no",
        report_to="none",
        logging_steps=1,
        save_strategy="no",
    )
    return TaskTrainingArguments(**{**settings, **overrides})


def make_trainer(tmp_path, family="bart", *, student_width=16, collator_model=False, args=None, **distill):
    teacher, student = models(family, student_width=student_width)
    return DistillationTrainer(
        model=student,
        args=args or training_args(tmp_path),
        train_dataset=rows(),
        data_collator=DataCollatorForSeq2Seq(TOKENIZER, model=student if collator_model else None),
        teacher=teacher,
        distill_args=DistillArguments(**distill),
        layer_pairs=PAIRS,
        decoder_layer_pairs=PAIRS,
    )


def one_batch(trainer, n: int = 4) -> dict:
    return trainer.data_collator([rows()[i] for i in range(n)])


# ---- training runs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "collator_model"),
    [("bart", True), ("mbart", False), ("marian", True), ("t5", False), ("bert2bert", False)],
)
def test_training_logs_every_pair_and_updates_the_student(tmp_path, family, collator_model):
    trainer = make_trainer(tmp_path, family, collator_model=collator_model)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        for s, t in PAIRS:
            for stack in ("enc", "dec"):
                value = entry[f"cka/{stack}_{s}_{t}"]
                assert math.isfinite(value) and 0.0 <= value <= 1.0
        assert all(math.isfinite(entry[f"loss/{name}"]) for name in ("task", "kd", "hidden"))
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("decoder" in k for k in changed) and any("encoder" in k for k in changed)
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher_before.items())


# ---- the loss, recomputed independently ---------------------------------------------------------


def shift_right(labels: torch.Tensor, start: int) -> torch.Tensor:
    """BART's decoder inputs, written out: start token, then the targets shifted by one, -100 -> pad."""
    shifted = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == -100, PAD)


def test_target_mask_keeps_the_start_slot_and_drops_padding():
    labels = torch.tensor([[9, 12, 8, -100], [-100, 7, -100, -100], [11, 10, 13, 14]])
    expected = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(target_mask(labels), expected)


def test_paper_weighting_matches_an_independent_recomputation(tmp_path):
    # kd_chunk_size 3 does not divide the 16 target positions of the batch, nor its 13 real ones.
    trainer = make_trainer(
        tmp_path, alpha_task=0.2, alpha_kd=0.8, alpha_hidden=1.0, hidden_reduction="sum", kd_chunk_size=3
    )
    batch = one_batch(trainer)
    trainer.model.eval()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert isinstance(outputs, Seq2SeqLMOutput) and set(outputs.keys()) == {"loss", "logits"}

    labels, source_mask = batch["labels"], batch["attention_mask"]
    features = dict(
        input_ids=batch["input_ids"],
        attention_mask=source_mask,
        decoder_input_ids=shift_right(labels, EOS),
        output_hidden_states=True,
    )
    with torch.no_grad():
        s, t = trainer.model(**features), trainer.teacher(**features)
        own_loss = trainer.model(input_ids=batch["input_ids"], attention_mask=source_mask, labels=labels).loss
    keep = labels != -100  # (B, T), position 0 included
    assert keep[:, 0].all() and not keep.all()
    ce = F.cross_entropy(s.logits.transpose(1, 2), labels, ignore_index=-100)
    torch.testing.assert_close(ce, own_loss)  # BART's own CE agrees on what the targets are
    kl = F.kl_div(
        F.log_softmax(s.logits[keep], -1),
        F.log_softmax(t.logits[keep], -1),
        log_target=True,
        reduction="batchmean",
    )
    src = source_mask.bool()

    def gap(x, y, m):
        return 1 - gram_cka(x[m], y[m]).float()

    enc = sum(gap(s.encoder_hidden_states[i], t.encoder_hidden_states[j], src) for i, j in PAIRS)
    dec = sum(gap(s.decoder_hidden_states[i], t.decoder_hidden_states[j], keep) for i, j in PAIRS)
    torch.testing.assert_close(loss, 0.2 * ce + 0.8 * kl + enc + dec, atol=1e-5, rtol=1e-5)

    # The authors' mask (start slot dropped) gives a different decoder term: the test can tell them apart.
    no_start = keep.clone()
    no_start[:, 0] = False
    dropped = sum(gap(s.decoder_hidden_states[i], t.decoder_hidden_states[j], no_start) for i, j in PAIRS)
    assert abs(float(dropped - dec)) > 1e-4


def test_decoder_inputs_from_the_collator_or_the_trainer_give_the_same_loss(tmp_path):
    built = make_trainer(tmp_path, "t5", alpha_task=0.5)
    given = make_trainer(tmp_path, "t5", alpha_task=0.5, collator_model=True)
    for trainer in (built, given):
        trainer.model.eval()
    batch_given = one_batch(given)
    assert "decoder_input_ids" in batch_given and "decoder_input_ids" not in one_batch(built)
    torch.testing.assert_close(
        built.compute_loss(built.model, one_batch(built)), given.compute_loss(given.model, batch_given)
    )
    with pytest.raises(ValueError, match="needs `labels`"):
        built.compute_loss(built.model, {k: v for k, v in batch_given.items() if k != "labels"})


# ---- hidden-loss variants on both stacks --------------------------------------------------------


def test_sequence_level_pools_each_stack_over_its_own_mask(tmp_path):
    trainer = make_trainer(tmp_path, alpha_task=0.0, alpha_kd=0.0, hidden_level="sequence")
    trainer.model.eval()
    batch = one_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    labels = batch["labels"]
    features = dict(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=shift_right(labels, EOS),
        output_hidden_states=True,
    )
    with torch.no_grad():
        s, t = trainer.model(**features), trainer.teacher(**features)

    def gap(x, y, m):
        return 1 - linear_cka(mean_pool(x, m), mean_pool(y, m))  # (B, d) rows

    enc = sum(
        gap(s.encoder_hidden_states[i], t.encoder_hidden_states[j], batch["attention_mask"]) for i, j in PAIRS
    )
    dec = sum(gap(s.decoder_hidden_states[i], t.decoder_hidden_states[j], labels != -100) for i, j in PAIRS)
    torch.testing.assert_close(loss, enc + dec)


def test_projected_mse_gets_one_projection_per_pair_of_both_stacks(tmp_path):
    trainer = make_trainer(tmp_path, "bert2bert", hidden_loss="mse_proj")
    assert len(trainer.projections) == 2 * len(PAIRS)
    assert all(p.linear.weight.shape == (32, 16) for p in trainer.projections)
    trainer.model.train()
    trainer.compute_loss(trainer.model, one_batch(trainer)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.projections.parameters())
    assert {f"cka/dec_{s}_{t}" for s, t in PAIRS} <= set(trainer._log_sums)


def test_cosine_checks_the_width_of_every_pair(tmp_path):
    with pytest.raises(ValueError, match=r"cosine needs equal widths.*pair enc_0_0.*16.*32"):
        make_trainer(tmp_path, hidden_loss="cosine")
    trainer = make_trainer(tmp_path, hidden_loss="cosine", student_width=32)
    trainer.model.eval()
    assert torch.isfinite(trainer.compute_loss(trainer.model, one_batch(trainer)))


# ---- early errors -------------------------------------------------------------------------------


def test_vocabulary_mismatch_is_rejected(tmp_path):
    teacher, student = models("marian", student_vocab=V - 5)
    with pytest.raises(ValueError, match=rf"teacher predicts over {V} tokens and the student over {V - 5}"):
        DistillationTrainer(
            model=student, args=training_args(tmp_path), teacher=teacher, distill_args=DistillArguments()
        )


def test_teacher_of_another_kind_is_rejected(tmp_path):
    _, student = models("bart")
    with pytest.raises(ValueError, match="encoder-only model and the student"):
        DistillationTrainer(
            model=student,
            args=training_args(tmp_path),
            teacher=tiny_bert(TOKENIZER, labels=["a", "b"]),
            distill_args=DistillArguments(),
        )


# ---- teacher outputs cached once ------------------------------------------------------------------

PAPER = dict(alpha_task=0.2, alpha_kd=0.8, kd_chunk_size=3)


@pytest.mark.parametrize("family", ["bart", "mbart", "t5", "bert2bert"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_cached_teacher_gives_the_live_loss_term_by_term(tmp_path, family, level):
    cached = make_trainer(tmp_path, family, cache_teacher=True, hidden_level=level, **PAPER)
    live = make_trainer(tmp_path, family, hidden_level=level, **PAPER)
    batch = cached.data_collator([cached.train_dataset[i] for i in (4, 1, 5, 0)])  # shuffled, uneven lengths
    assert batch[EXAMPLE_ID].tolist() == [4, 1, 5, 0]
    assert_cached_loss_is_live(cached, live, batch)
    assert set(cached._log_sums) == set(live._log_sums) and len(live._log_sums) == 3 + 2 * len(PAIRS)
    for name, value in live._log_sums.items():  # task, kd, hidden and every enc/dec pair's CKA
        torch.testing.assert_close(cached._log_sums[name], value, atol=1e-5, rtol=5e-3, msg=name)


def test_cache_holds_the_target_positions_of_the_decoder(tmp_path):
    trainer = make_trainer(tmp_path, "bart", cache_teacher=True, **PAPER)
    cache, data = trainer.teacher_cache, trainer.train_dataset
    assert cache.layers == cache.decoder_layers == (0, 2, 4) and cache.per_token_logits
    ids = torch.tensor([2, 0])
    targets = len(data[2]["labels"]) + len(data[0]["labels"])
    assert cache.token_logits(ids).shape == (targets, V)
    assert cache.hidden_rows(4, ids, decoder=True).shape == (targets, 32)
    assert cache.hidden_rows(4, ids).shape == (len(data[2]["input_ids"]) + len(data[0]["input_ids"]), 32)
    with pytest.raises(TypeError, match="token_logits"):
        cache.logits(ids)
    # Row 2 alone, run live: its logits at every target position, in order.
    labels = torch.tensor([data[2]["labels"]])
    with torch.no_grad():
        live = trainer.teacher(
            input_ids=torch.tensor([data[2]["input_ids"]]),
            decoder_input_ids=trainer.model.prepare_decoder_input_ids_from_labels(labels=labels),
        )
    torch.testing.assert_close(cache.token_logits(torch.tensor([2])), live.logits[0], atol=1e-2, rtol=1e-2)
    need = TeacherCache.estimate_bytes(
        sum(map(len, data["input_ids"])), len(data), 32, 3, 0,
        num_target_tokens=sum(map(len, data["labels"])), decoder_width=32, num_decoder_layers=3, vocab_size=V,
    )  # fmt: skip
    assert need == cache.nbytes


def test_cached_distillation_trains_and_reuses_the_file_only_for_the_same_targets(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    trainer = make_trainer(tmp_path, "t5", cache_teacher=True, cache_teacher_dir=str(folder), **PAPER)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(math.isfinite(e["cka/dec_2_4"]) for e in logged)
    assert len(list(folder.glob("teacher-outputs-*.safetensors"))) == 1

    built = []
    real_build = TeacherCache.build.__func__
    monkeypatch.setattr(
        TeacherCache, "build", classmethod(lambda cls, *a, **kw: built.append(1) or real_build(cls, *a, **kw))
    )
    again = make_trainer(tmp_path, "t5", cache_teacher=True, cache_teacher_dir=str(folder), **PAPER)
    assert built == []  # read back, with its decoder part
    ids = torch.arange(len(again.train_dataset))
    torch.testing.assert_close(again.teacher_cache.token_logits(ids), trainer.teacher_cache.token_logits(ids))
    assert again.teacher_cache.decoder_layers == (0, 2, 4)

    teacher = again.teacher
    data = again.train_dataset
    other_targets = data.map(lambda row: {"labels": row["labels"][:-1] or row["labels"]})
    key = TeacherCache.key(teacher, data, [0, 2, 4], decoder_layers=[0, 2, 4])
    assert TeacherCache.key(teacher, other_targets, [0, 2, 4], decoder_layers=[0, 2, 4]) != key
    assert TeacherCache.key(teacher, data, [0, 2, 4], decoder_layers=[0, 4]) != key


def test_cache_without_targets_is_refused_with_the_fix(tmp_path):
    teacher, student = models("bart")
    with pytest.raises(ValueError, match=r"targets as a `labels` column.*--target_column"):
        DistillationTrainer(
            model=student,
            args=training_args(tmp_path),
            train_dataset=rows().remove_columns("labels"),
            data_collator=DataCollatorForSeq2Seq(TOKENIZER),
            teacher=teacher,
            distill_args=DistillArguments(cache_teacher=True, **PAPER),
            layer_pairs=PAIRS,
            decoder_layer_pairs=PAIRS,
        )


def test_cache_too_large_names_the_seq2seq_length_flags(tmp_path):
    with pytest.raises(
        ValueError, match=r"--cache_teacher_max_gb .* --max_source_length / --max_target_length"
    ):
        make_trainer(tmp_path, cache_teacher=True, cache_teacher_max_gb=1e-9)


def test_length_grouped_batches_cut_the_padding(tmp_path):
    """`--train_sampling_strategy group_by_length` (the Trainer's LengthGroupedSampler) works through
    the distillation trainer: 48 sources of lengths 4..9 in batches of 4 (mega-batches of 3 batches,
    each sorted by length) carry far less padding than random batches."""

    def positions(strategy: str) -> tuple[int, int]:
        args = training_args(tmp_path, train_sampling_strategy=strategy, per_device_train_batch_size=4)
        trainer = make_trainer(tmp_path, args=args)
        trainer.train_dataset = rows(48)
        batches = list(trainer.get_train_dataloader())
        assert len(batches) == 12
        return sum(b["input_ids"].numel() for b in batches), sum(
            int(b["attention_mask"].sum()) for b in batches
        )

    random_padded, real = positions("random")
    grouped_padded, grouped_real = positions("group_by_length")
    assert grouped_real == real == sum(4 + (i * 5) % 6 for i in range(48))
    assert grouped_padded - real < (random_padded - real) / 2

    args = training_args(tmp_path, train_sampling_strategy="group_by_length", per_device_train_batch_size=4)
    trainer = make_trainer(tmp_path, args=args)
    trainer.train()
    assert all(math.isfinite(e["loss/hidden"]) for e in trainer.state.log_history if "loss" in e)


# ---- evaluation with generation -----------------------------------------------------------------


def test_generating_evaluation_reports_the_distillation_loss(tmp_path):
    args = training_args(
        tmp_path, predict_with_generate=True, generation_max_length=6, per_device_eval_batch_size=4
    )
    trainer = make_trainer(tmp_path, args=args, alpha_task=0.2, alpha_kd=0.8)
    eval_rows = rows(4, seed=1)
    metrics = trainer.evaluate(eval_dataset=eval_rows)
    trainer.model.eval()
    batch = trainer.data_collator([eval_rows[i] for i in range(4)])
    expected = trainer.compute_loss(trainer.model, batch)
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)
    trainer.args.predict_with_generate = False  # the Trainer's own path: compute_loss on the batch
    assert trainer.evaluate(eval_dataset=eval_rows)["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)
    trainer.args.predict_with_generate = True
    predictions = trainer.predict(eval_rows).predictions  # generated token ids, padded by the Seq2SeqTrainer
    assert predictions.shape[0] == 4 and ((predictions >= 0) & (predictions < V)).all()
