"""DistillationTrainer pieces, checked against independent computations on tiny in-memory models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ckadistill.config import ClassificationTrainingArguments, DistillArguments
from ckadistill.losses import kl_logits_loss, linear_cka, mean_pool
from ckadistill.trainer import DistillationTrainer, logit_distillation_loss, task_loss
from conftest import SENTENCES
from test_distill_cli import tiny_bert

LABELS = ["a", "b", "c"]
PAIRS = [(0, 0), (1, 2), (2, 4)]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- pure loss pieces ---------------------------------------------------------------------------


def test_task_loss_ignores_unlabelled_rows():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, -100, 2, -100, 1])
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(task_loss(logits, labels, regression=False), expected)


def test_all_unlabelled_batch_gives_zero_not_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = task_loss(logits, torch.full((4,), -100), regression=False)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert task_loss(torch.randn(4, 1), torch.full((4,), -100.0), regression=True).item() == 0.0


def test_regression_losses():
    preds, targets = torch.randn(4, 1), torch.tensor([0.5, -100.0, 2.0, 1.0])
    keep = targets != -100
    torch.testing.assert_close(
        task_loss(preds, targets, regression=True), F.mse_loss(preds[keep, 0], targets[keep])
    )
    teacher = torch.randn(4, 1)
    kd = logit_distillation_loss(preds, teacher, regression=True, temperature=2.0, reverse=False)
    torch.testing.assert_close(kd, F.mse_loss(preds, teacher))


def test_classification_kd_is_the_tempered_kl():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    kd = logit_distillation_loss(s, t, regression=False, temperature=2.0, reverse=False)
    torch.testing.assert_close(kd, kl_logits_loss(s, t, temperature=2.0))
    manual = (
        F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean")
        * 4
    )
    torch.testing.assert_close(kd, manual)


# ---- the trainer on tiny models -----------------------------------------------------------------


def quiet_bert(tokenizer, **kwargs):
    model = tiny_bert(tokenizer, labels=LABELS, **kwargs)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():  # dropout off, so train-mode forwards are reproducible
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def make_trainer(tokenizer, tmp_path, *, student_hidden=16, **distill):
    teacher = quiet_bert(tokenizer)
    student = quiet_bert(tokenizer, hidden=student_hidden, layers=2, seed=1)
    args = ClassificationTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    return DistillationTrainer(
        model=student, args=args, teacher=teacher, distill_args=DistillArguments(**distill), layer_pairs=PAIRS
    )


def batch(tokenizer, start: int = 0, labels=(0, 1, 2, 0)):
    enc = tokenizer(SENTENCES[start : start + 4], padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor(labels)}


def test_loss_is_the_weighted_sum_of_independent_terms(tokenizer, tmp_path):
    trainer = make_trainer(
        tokenizer, tmp_path, alpha_task=0.2, alpha_kd=0.8, alpha_hidden=0.5, temperature=2.0
    )
    inputs = batch(tokenizer)
    trainer.model.eval()
    loss, outputs = trainer.compute_loss(trainer.model, inputs, return_outputs=True)

    features = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        s = trainer.model(**features, output_hidden_states=True)
        t = trainer.teacher(**features, output_hidden_states=True)
    mask = inputs["attention_mask"]
    hidden = sum(1 - linear_cka(s.hidden_states[i], t.hidden_states[j], mask) for i, j in PAIRS)
    expected = (
        0.2 * F.cross_entropy(s.logits, inputs["labels"])
        + 0.8 * kl_logits_loss(s.logits, t.logits, temperature=2.0)
        + 0.5 * hidden
    )
    torch.testing.assert_close(loss, expected)
    assert set(outputs.keys()) == {"loss", "logits"}  # no hidden states leak into predictions


def test_sequence_level_compares_mean_pooled_states(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0, hidden_level="sequence")
    trainer.model.eval()
    inputs = batch(tokenizer)
    loss = trainer.compute_loss(trainer.model, inputs)
    features = {k: v for k, v in inputs.items() if k != "labels"}
    mask = inputs["attention_mask"]
    with torch.no_grad():
        s = trainer.model(**features, output_hidden_states=True).hidden_states
        t = trainer.teacher(**features, output_hidden_states=True).hidden_states
    pooled = [(mean_pool(s[i], mask), mean_pool(t[j], mask)) for i, j in PAIRS]  # (4, d) each
    torch.testing.assert_close(loss, sum(1 - linear_cka(x, y) for x, y in pooled))
    token_level = make_trainer(tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0)
    token_level.model.eval()
    assert abs(token_level.compute_loss(token_level.model, inputs).item() - loss.item()) > 1e-3


def test_cka_max_tokens_uses_one_draw_of_real_tokens_per_step(tokenizer, tmp_path):
    inputs = batch(tokenizer)
    mask = inputs["attention_mask"]
    n = int(mask.sum())
    trainer = make_trainer(tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0, cka_max_tokens=n // 2)
    trainer.model.eval()
    trainer.state.global_step = 3
    loss = trainer.compute_loss(trainer.model, inputs)

    # Reference: the same draw (seed, step) of the real-token rows, shared by every pair.
    generator = torch.Generator().manual_seed(trainer.args.seed * 1_000_003 + 3)
    rows = torch.randperm(n, generator=generator)[: n // 2].sort().values
    features = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        s = trainer.model(**features, output_hidden_states=True).hidden_states
        t = trainer.teacher(**features, output_hidden_states=True).hidden_states
    real = mask.reshape(-1).bool()
    expected = sum(
        1
        - linear_cka(
            s[i].reshape(-1, s[i].shape[-1])[real][rows], t[j].reshape(-1, t[j].shape[-1])[real][rows]
        )
        for i, j in PAIRS
    )
    torch.testing.assert_close(loss, expected)
    full = make_trainer(tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0)
    full.model.eval()
    assert abs(full.compute_loss(full.model, inputs).item() - loss.item()) > 1e-4  # a subset, not all rows
    trainer.state.global_step = 4
    assert abs(trainer.compute_loss(trainer.model, inputs).item() - loss.item()) > 1e-6  # a new draw per step
    roomy = make_trainer(tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0, cka_max_tokens=n)
    roomy.model.eval()
    torch.testing.assert_close(roomy.compute_loss(roomy.model, inputs), full.compute_loss(full.model, inputs))
    with pytest.raises(ValueError, match="--cka_max_tokens must be at least 2"):
        DistillArguments(cka_max_tokens=1)


def test_linear_decay_schedule_scales_the_hidden_term(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0, hidden_schedule="linear_decay")
    trainer.model.eval()
    trainer.state.max_steps = 8
    losses = {}
    for step in (0, 2, 8):
        trainer.state.global_step = step
        losses[step] = trainer.compute_loss(trainer.model, batch(tokenizer)).detach()
    assert float(losses[0]) > 0
    torch.testing.assert_close(losses[2], 0.75 * losses[0])
    assert float(losses[8]) == 0.0


@pytest.mark.parametrize("cka_sqrt", [False, True])
def test_pair_reduction_and_sqrt(tokenizer, tmp_path, cka_sqrt):
    def hidden_term(reduction):
        trainer = make_trainer(
            tokenizer, tmp_path, alpha_task=0.0, alpha_kd=0.0, hidden_reduction=reduction, cka_sqrt=cka_sqrt
        )
        trainer.model.eval()
        return trainer, trainer.compute_loss(trainer.model, batch(tokenizer))

    trainer, summed = hidden_term("sum")
    _, mean = hidden_term("mean")
    torch.testing.assert_close(summed, len(PAIRS) * mean)
    inputs = batch(tokenizer)
    features = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        s = trainer.model(**features, output_hidden_states=True).hidden_states
        t = trainer.teacher(**features, output_hidden_states=True).hidden_states
    ckas = [linear_cka(s[i], t[j], inputs["attention_mask"]) for i, j in PAIRS]
    expected = sum(1 - (c.sqrt() if cka_sqrt else c) for c in ckas)
    torch.testing.assert_close(summed, expected)


def test_components_are_averaged_over_the_logging_interval(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.model.train()
    first, second = batch(tokenizer, 0), batch(tokenizer, 4)
    values = []
    for inputs in (first, second):
        features = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            logits = trainer.model(**features).logits
        values.append(F.cross_entropy(logits, inputs["labels"]).item())
        trainer.compute_loss(trainer.model, inputs)
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["loss/task"] == pytest.approx(sum(values) / 2, rel=1e-5)
    assert {"loss/kd", "loss/hidden", "cka/enc_0_0", "cka/enc_1_2", "cka/enc_2_4"} <= set(logged)
    assert all(math.isfinite(v) for k, v in logged.items() if k.startswith(("loss", "cka")))
    trainer.log({"eval_loss": 2.0})  # evaluation logs get no training components
    assert "loss/task" not in trainer.state.log_history[-1]


def test_teacher_is_frozen_and_gets_no_gradient(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    assert not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch(tokenizer)).backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    assert trainer.teacher not in list(trainer.model.modules())


def test_projections_join_the_optimizer_once(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, hidden_loss="mse_proj")
    assert len(trainer.projections) == len(PAIRS) and trainer.projections[0].linear.weight.shape == (32, 16)
    optimizer = trainer.create_optimizer()
    trainer.create_optimizer()  # a second call must not add them again
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    for p in trainer.projections.parameters():
        assert in_optimizer.count(id(p)) == 1
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch(tokenizer)).backward()
    assert all(p.grad is not None for p in trainer.projections.parameters())
    assert not any("linear" in name for name in trainer.model.state_dict())


def test_cosine_needs_equal_widths(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"--hidden_loss cosine needs equal widths.*16.*32"):
        make_trainer(tokenizer, tmp_path, hidden_loss="cosine")
    trainer = make_trainer(tokenizer, tmp_path, hidden_loss="cosine", student_hidden=32)
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch(tokenizer)))


def test_head_mismatch_is_rejected(tokenizer, tmp_path):
    teacher = tiny_bert(tokenizer, labels=LABELS)
    student = tiny_bert(tokenizer, labels=["x", "y"], hidden=16, layers=2)
    args = ClassificationTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    with pytest.raises(ValueError, match="need the same head"):
        DistillationTrainer(
            model=student, args=args, teacher=teacher, distill_args=DistillArguments(), layer_pairs=PAIRS
        )


def test_seq2seq_options_are_rejected_for_classifiers(tokenizer, tmp_path):
    def build(args, **kwargs):
        return DistillationTrainer(
            model=quiet_bert(tokenizer, hidden=16, layers=2),
            args=args,
            teacher=quiet_bert(tokenizer),
            distill_args=DistillArguments(),
            layer_pairs=PAIRS,
            **kwargs,
        )

    args = ClassificationTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    with pytest.raises(ValueError, match="have no decoder"):
        build(args, decoder_layer_pairs=[(0, 0)])
    args.predict_with_generate = True
    with pytest.raises(ValueError, match="--predict_with_generate needs an encoder-decoder student"):
        build(args)
