"""`DistillationTrainer`: a `transformers.Seq2SeqTrainer` that changes what loss is computed, and logs its parts.

    loss = alpha_task · task(labels) + alpha_kd · KD(teacher logits) + alpha_hidden · Σ_pairs hidden(pair)

One loss path serves four kinds of student (`model_kind`):

- sequence classifiers: task = CE over labelled rows (-100 = unlabelled), or MSE for regression; KD =
  `KL(p_teacher || p_student)` at temperature T, times T² (MSE for regression); hidden pairs index
  `hidden_states` over the real tokens (`attention_mask`).
- encoder-decoder LMs (BART, mBART, T5, Marian, `EncoderDecoderModel`): task = token CE and KD = token KL
  over the target positions (`labels != -100`), in chunks of `kd_chunk_size` positions; encoder pairs
  index `encoder_hidden_states` over the real source tokens, decoder pairs `decoder_hidden_states` over
  the same target positions. Both models read the same `decoder_input_ids` and never see `labels`, so
  neither computes a full-vocabulary loss of its own. The decoder mask keeps the start slot (position 0
  predicts the first target token): it is exactly where CE and KL act, whatever built the decoder
  inputs. The authors' code drops that slot, whose state is the same for every example.
- masked LMs (`BertForMaskedLM`, ...; task-agnostic distillation): task = token CE on `labels` (the
  masked positions when the collator masks), KD = token KL over the same positions, or over every real
  token when the batch has no `labels` (unmasked text, the paper's first stage).
- encoders without a head (`BertModel`, sentence encoders): no task or KD term; `pooled` = a loss on
  the mean-pooled (or first-token) last hidden states, across the batch: 1 - CKA over the B pooled
  vectors, or 1 - cosine per example when the widths match (`--pooled_loss`).

hidden: per pair, `1 - CKA` (default), cosine or projected MSE over token rows or mean-pooled examples
(`hidden_level`); summed (the paper) or averaged over all pairs of both stacks; constant weight or a
linear decay to 0 (`hidden_schedule`).

The teacher is a plain attribute: frozen, in eval mode, run under `no_grad`, on the student's device,
never handed to `accelerator.prepare`. Everything else (checkpoints, resume, mixed precision,
accumulation, logging, generation in evaluation) is the Seq2SeqTrainer's own. With `--cache_teacher`
(classifiers, bare encoders, encoder-decoders) the teacher runs once over the training set and its
outputs are replayed (`ckadistill.teacher_cache`); evaluation still runs it live.

A student with a trimmed vocabulary (`--trim_vocab`) reads its own token ids; `teacher_token_ids` maps
them to the teacher's before every teacher pass (`input_ids`, `decoder_input_ids`), so both models read
the same tokens at the same positions, and token-level KL restricts the teacher's distribution to the
student's tokens (renormalised).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel, Seq2SeqTrainer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    Seq2SeqLMOutput,
    SequenceClassifierOutput,
)

from ckadistill.config import DistillArguments
from ckadistill.distributed import average_gradients, gather_rows
from ckadistill.losses import (
    IGNORE_INDEX,
    HiddenProjection,
    cka_loss,
    cosine_hidden_loss,
    layer_pair_rows,
    linear_cka,
    logit_distillation_loss,
    mean_pool,
    projected_mse_loss,
    select_tokens,
    target_mask,
    task_loss,
    token_level_terms,
)
from ckadistill.teacher_cache import EXAMPLE_ID, TeacherCache

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "hidden_projections.safetensors"  # in checkpoint folders only, never in the student


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the components and the step."""


def is_regression(config) -> bool:
    """A single-output head is a regression head (GLUE STS-B style)."""
    return config.problem_type == "regression" or config.num_labels == 1


def pair_name(student_index: int, teacher_index: int, stack: str = "enc") -> str:
    """Log name of a layer pair, e.g. `enc_2_4`."""
    return f"{stack}_{student_index}_{teacher_index}"


MODEL_KINDS = ("classifier", "seq2seq", "mlm", "encoder")


def model_kind(model: PreTrainedModel) -> str:
    """What a model outputs, which decides the loss terms: 'seq2seq' (an encoder-decoder LM),
    'classifier' (a sequence classifier or regressor), 'mlm' (a masked LM: token logits over its
    input) or 'encoder' (hidden states only)."""
    if model.config.is_encoder_decoder:
        return "seq2seq"
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith("ForMaskedLM"):
        return "mlm"
    if name.endswith("Model"):
        return "encoder"
    raise ValueError(
        f"{name} is not a model ckadistill distils: use a sequence classifier, an encoder-decoder LM, a "
        "masked LM (AutoModelForMaskedLM) or a bare encoder (AutoModel)"
    )


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the LM head (the output vocabulary) of an encoder-decoder LM."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no language-model head: encoder-decoder models are distilled as "
            "sequence-to-sequence LMs (e.g. BartForConditionalGeneration, T5ForConditionalGeneration, "
            "MarianMTModel, EncoderDecoderModel); load teacher and student with such a class"
        )
    return int(head.weight.shape[0])


def stack_widths(model: PreTrainedModel) -> tuple[int, int]:
    """`(encoder width, decoder width)` of an encoder-decoder model, from each stack's own config."""
    return int(model.get_encoder().config.hidden_size), int(model.get_decoder().config.hidden_size)


def to_teacher_ids(ids: Tensor, teacher_token_ids: Tensor) -> Tensor:
    """`(B, T)` student token ids as teacher ids (`teacher_token_ids[ids]`); negative values (-100) kept."""
    table = teacher_token_ids.to(ids.device)
    return torch.where(ids >= 0, table[ids.clamp(min=0)], ids)


@contextlib.contextmanager
def _held(lock_path: str) -> Iterator[None]:
    """Hold an inter-process file lock, saying so when another process has it first (waits can be long)."""
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("Another run holds %s: waiting for it to finish the file", lock_path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class DistillationTrainer(Seq2SeqTrainer):
    """Trainer for a student learning from a frozen teacher; see the module docstring for the loss.

    Args (besides the Seq2SeqTrainer's own):
        teacher: a model of the student's kind: a sequence classifier with the student's label set, or
            an encoder-decoder LM with the student's output vocabulary.
        distill_args: loss weights, temperature, hidden loss, reduction, `cka_sqrt`, `kd_chunk_size`.
        layer_pairs: `(student, teacher)` indices into `hidden_states` (0 = embeddings); for
            encoder-decoders, into `encoder_hidden_states`. Per-pair CKA is logged for every pair
            (computed without gradient when the hidden loss is not CKA).
        decoder_layer_pairs: the same for `decoder_hidden_states` (encoder-decoders only).
        teacher_token_ids: `(V_s,)` int64, the teacher's id of each student token id, for a student with a
            trimmed vocabulary (`ckadistill.vocab.trim_student`); None when both share one vocabulary.
        pooling: how a bare encoder's sentence vector is read from its last hidden states, 'mean' (over
            the real tokens) or 'cls' (the first token); used by the `pooled` term only.
    """

    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        teacher: PreTrainedModel,
        distill_args: DistillArguments,
        layer_pairs: Sequence[tuple[int, int]] = (),
        decoder_layer_pairs: Sequence[tuple[int, int]] = (),
        teacher_token_ids: Tensor | None = None,
        pooling: str = "mean",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.kind = model_kind(self.model)
        self.is_seq2seq = self.kind == "seq2seq"
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.teacher_token_ids = None
        if teacher_token_ids is not None:
            self._check_token_ids(teacher, teacher_token_ids)
            self.teacher_token_ids = teacher_token_ids.to(self.args.device, torch.long)  # (V_s,)
        self._check_teacher(teacher, distill_args, decoder_layer_pairs)
        # Replicated, never wrapped: the Trainer hands only the student to DDP / FSDP / DeepSpeed.
        dtype = None
        if self.is_deepspeed_enabled:  # it casts the student to its dtype and runs it without autocast
            dtype = self.accelerator.state.deepspeed_plugin.hf_ds_config.dtype()
        self.teacher = teacher.to(self.args.device, dtype=dtype).eval().requires_grad_(False)
        self.distill_args = distill_args
        self.regression = self.kind == "classifier" and is_regression(self.model.config)
        self.layer_pairs = tuple((int(s), int(t)) for s, t in layer_pairs)
        self.decoder_layer_pairs = tuple((int(s), int(t)) for s, t in decoder_layer_pairs)
        self.pair_names = [pair_name(s, t, "enc") for s, t in self.layer_pairs]
        self.pair_names += [pair_name(s, t, "dec") for s, t in self.decoder_layer_pairs]
        self.uses_hidden = (
            bool(self.pair_names) and distill_args.hidden_loss != "none" and distill_args.alpha_hidden > 0
        )
        self.pooled_loss: str | None = None  # bare encoders: 'cka' or 'cosine'
        if self.kind == "encoder" and distill_args.alpha_pooled > 0 and distill_args.pooled_loss != "none":
            same_width = self.model.config.hidden_size == teacher.config.hidden_size
            self.pooled_loss = distill_args.pooled_loss
            if self.pooled_loss == "auto":
                self.pooled_loss = "cosine" if same_width else "cka"
            if self.pooled_loss == "cosine" and not same_width:
                raise ValueError(
                    f"--pooled_loss cosine needs equal widths, but the student is {self.model.config.hidden_size} "
                    f"wide and the teacher {teacher.config.hidden_size}: use --pooled_loss cka (or auto)"
                )

        # Widths per pair, (student, teacher): encoder pairs first, then decoder pairs.
        if self.is_seq2seq:
            (enc_s, dec_s), (enc_t, dec_t) = stack_widths(self.model), stack_widths(teacher)
        else:
            enc_s, enc_t = self.model.config.hidden_size, teacher.config.hidden_size
            dec_s, dec_t = enc_s, enc_t
        widths = [(enc_s, enc_t)] * len(self.layer_pairs) + [(dec_s, dec_t)] * len(self.decoder_layer_pairs)
        if self.uses_hidden and distill_args.hidden_loss == "cosine":
            for (d_s, d_t), name in zip(widths, self.pair_names, strict=True):
                if d_s != d_t:
                    raise ValueError(
                        f"--hidden_loss cosine needs equal widths, but in pair {name} the student is {d_s} wide "
                        f"and the teacher {d_t}: use --hidden_loss cka (any widths) or mse_proj (learned projection)"
                    )
        if self.kind == "encoder":
            active = self.uses_hidden or self.pooled_loss is not None
        else:
            active = self.uses_hidden or distill_args.alpha_task > 0 or distill_args.alpha_kd > 0
        if not active:
            what = "--alpha_hidden (with a --hidden_loss and layer pairs) or --alpha_pooled (with a --pooled_loss)"
            if self.kind != "encoder":
                what = "--alpha_task, --alpha_kd or --alpha_hidden (with a --hidden_loss and layer pairs)"
            raise ValueError(f"no loss term applies to this {self.kind} student: set {what} above 0")
        self.projections: nn.ModuleList | None = None
        if self.uses_hidden and distill_args.hidden_loss == "mse_proj":
            if self.is_deepspeed_enabled:
                raise ValueError(
                    "--hidden_loss mse_proj trains projections that live outside the student, and a DeepSpeed "
                    "engine optimises only the model it wraps: use --hidden_loss cka (no parameters of its "
                    "own), or run mse_proj with plain data parallelism (torchrun, accelerate launch --multi_gpu)"
                )
            projections = [HiddenProjection(d_s, d_t) for d_s, d_t in widths]  # one per pair, both stacks
            self.projections = nn.ModuleList(projections).to(self.args.device)
            # The projections live outside the student (so it is saved without them), hence outside DDP:
            # their gradients are averaged over the processes by hooks, as DDP does for the student's.
            self._projection_hooks = average_gradients(self.projections)
        self._log_sums: dict[str, Tensor] = {}
        self._log_batches = 0
        self.teacher_cache: TeacherCache | None = None
        if distill_args.cache_teacher and self.train_dataset is not None:
            self.teacher_cache = self._build_teacher_cache()

    def _check_token_ids(self, teacher: PreTrainedModel, token_ids: Tensor) -> None:
        """A trimmed student's id map: one teacher id per student embedding row, each within the teacher's."""
        rows = self.model.get_input_embeddings().weight.shape[0]
        teacher_rows = teacher.get_input_embeddings().weight.shape[0]
        if token_ids.dim() != 1 or token_ids.numel() != rows:
            raise ValueError(
                f"teacher_token_ids must hold one teacher id per student token ({rows}), got shape "
                f"{tuple(token_ids.shape)}"
            )
        if int(token_ids.min()) < 0 or int(token_ids.max()) >= teacher_rows:
            raise ValueError(f"teacher_token_ids must lie in [0, {teacher_rows}), the teacher's vocabulary")

    def _output_vocab_matches(self, student: PreTrainedModel, teacher: PreTrainedModel) -> bool:
        """Whether token logits line up: the same vocabulary, or a trimmed student's kept rows of it."""
        if self.teacher_token_ids is not None:
            return output_vocab_size(student) == self.teacher_token_ids.numel()
        return output_vocab_size(student) == output_vocab_size(teacher)

    def _check_teacher(
        self, teacher: PreTrainedModel, distill_args: DistillArguments, decoder_layer_pairs: Sequence
    ) -> None:
        """Early, actionable errors: the teacher's kind and head must be the student's."""
        student = self.model
        if bool(teacher.config.is_encoder_decoder) != self.is_seq2seq:
            kinds = {True: "an encoder-decoder", False: "an encoder-only"}
            raise ValueError(
                f"the teacher ({teacher.config.model_type}) is {kinds[bool(teacher.config.is_encoder_decoder)]} "
                f"model and the student ({student.config.model_type}) {kinds[self.is_seq2seq]} one: build the "
                "student from the teacher's family"
            )
        teacher_kind = model_kind(teacher)
        if teacher_kind != self.kind:
            raise ValueError(
                f"the teacher is a {type(teacher).__name__} ({teacher_kind}) and the student a "
                f"{type(student).__name__} ({self.kind}): load both with the same head (build the student "
                "from the teacher, or load it with the teacher's Auto class)"
            )
        if self.kind in ("mlm", "encoder"):
            if decoder_layer_pairs:
                raise ValueError(
                    f"decoder layer pairs given, but {student.config.model_type} models have no decoder: "
                    "leave --decoder_layer_map at its default"
                )
            if self.kind == "mlm" and not self._output_vocab_matches(student, teacher):
                raise ValueError(
                    f"the teacher predicts over {output_vocab_size(teacher)} tokens and the student over "
                    f"{output_vocab_size(student)}: KL on token logits needs the same vocabulary, so build "
                    "the student from the teacher"
                )
            if distill_args.cache_teacher and self.kind == "mlm":
                raise ValueError(
                    "--cache_teacher would hold a masked LM's logits for every token (vocabulary × tokens): "
                    "drop --cache_teacher (bare encoders and classifiers can cache)"
                )
            return
        if not self.is_seq2seq:
            if decoder_layer_pairs:
                raise ValueError(
                    f"decoder layer pairs given, but {student.config.model_type} models have no decoder: "
                    "leave --decoder_layer_map at its default"
                )
            if is_regression(student.config) != is_regression(teacher.config) or (
                student.config.num_labels != teacher.config.num_labels
            ):
                raise ValueError(
                    f"teacher ({teacher.config.num_labels} outputs) and student ({student.config.num_labels} "
                    "outputs) need the same head: build the student from the teacher or pass a student with "
                    "the teacher's labels"
                )
            if self.args.predict_with_generate:
                raise ValueError(
                    "--predict_with_generate needs an encoder-decoder student; drop it for classification"
                )
            return
        v_s, v_t = output_vocab_size(student), output_vocab_size(teacher)
        if not self._output_vocab_matches(student, teacher):
            raise ValueError(
                f"the teacher predicts over {v_t} tokens and the student over {v_s}: KL on token logits needs "
                "the same output vocabulary, so build the student from the teacher (same tokenizer and "
                "vocab_size) rather than from another checkpoint"
            )

    def _build_teacher_cache(self) -> TeacherCache:
        dataset = self.train_dataset
        if EXAMPLE_ID not in dataset.column_names:
            dataset = self.train_dataset = dataset.add_column(EXAMPLE_ID, list(range(len(dataset))))
        if dataset[EXAMPLE_ID] != list(range(len(dataset))):
            raise ValueError(f"column {EXAMPLE_ID!r} must number the training rows 0..N-1 in order")
        layers = {t for _, t in self.layer_pairs}
        if self.pooled_loss is not None:  # a bare encoder's sentence vectors come from its last layer
            layers.add(self.teacher.config.num_hidden_layers)
        layers = sorted(layers)
        decoder_layers = sorted({t for _, t in self.decoder_layer_pairs})
        num_tokens = sum(len(ids) for ids in dataset["input_ids"])
        if self.is_seq2seq:
            if "labels" not in dataset.column_names:
                raise ValueError(
                    "--cache_teacher on an encoder-decoder needs the targets as a `labels` column of the "
                    "training rows (ckadistill distill tokenises --target_column into it): add it, or drop "
                    "--cache_teacher"
                )
            width, decoder_width = stack_widths(self.teacher)
            seq2seq_size = dict(
                num_target_tokens=sum(sum(1 for t in row if t != IGNORE_INDEX) for row in dataset["labels"]),
                decoder_width=decoder_width,
                num_decoder_layers=len(decoder_layers),
                vocab_size=output_vocab_size(self.teacher),
            )
        else:
            width, seq2seq_size = self.teacher.config.hidden_size, {}
        need = TeacherCache.estimate_bytes(
            num_tokens,
            len(dataset),
            width,
            len(layers),
            self.teacher.config.num_labels if self.kind == "classifier" else 0,
            **seq2seq_size,
        )
        limit = self.distill_args.cache_teacher_max_gb * 2**30
        if need > limit:
            shorten = "--max_source_length / --max_target_length" if self.is_seq2seq else "--max_length"
            raise ValueError(
                f"--cache_teacher would hold {need / 2**30:.1f} GiB of teacher outputs, above "
                f"--cache_teacher_max_gb {self.distill_args.cache_teacher_max_gb}: raise the limit, shorten "
                f"{shorten}, use fewer layer pairs, or drop --cache_teacher"
            )

        def build() -> TeacherCache:
            return TeacherCache.build(
                self.teacher,
                dataset,
                self.data_collator,
                layers,
                batch_size=self.args.per_device_eval_batch_size,
                device=self.args.device,
                token_ids=self.teacher_token_ids,
                decoder_layers=decoder_layers,
                decoder_inputs=self._decoder_input_ids if self.is_seq2seq else None,
            )

        if not self.distill_args.cache_teacher_dir:
            return build()
        key = TeacherCache.key(
            self.teacher, dataset, layers, token_ids=self.teacher_token_ids, decoder_layers=decoder_layers
        )
        path = os.path.join(self.distill_args.cache_teacher_dir, f"teacher-outputs-{key}.safetensors")
        # The process that writes the file holds a lock beside it from the check to the write, so runs
        # sharing the folder (seeds started side by side) compute each file once: a second run with the
        # same key waits, then reads it. The other processes of a distributed run never write, and
        # never wait.
        lock = contextlib.nullcontext()
        if self.args.should_save:
            os.makedirs(self.distill_args.cache_teacher_dir, exist_ok=True)
            lock = _held(path + ".lock")
        with lock:
            if os.path.isfile(path):
                logger.info("Reading the teacher's outputs from %s", path)
                return TeacherCache.load(path)
            cache = build()
            if self.args.should_save:
                cache.save(path)
                logger.info("Saved the teacher's outputs to %s for later runs", path)
        return cache

    def _set_signature_columns_if_needed(self):
        # The Trainer drops dataset columns the model's forward does not take; the cache needs the row ids.
        super()._set_signature_columns_if_needed()
        if self.teacher_cache is not None and EXAMPLE_ID not in self._signature_columns:
            self._signature_columns.append(EXAMPLE_ID)

    # ---- the loss ------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.distill_args
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)  # neither model computes its own loss
        example_ids = inputs.pop(EXAMPLE_ID, None)
        if self.is_seq2seq:
            self._add_decoder_inputs(model, inputs, labels)
        cached = self.teacher_cache is not None and example_ids is not None and model.training
        want_hidden = bool(self.pair_names)

        # Forward passes: the student with gradients, the teacher frozen (unless its outputs are cached).
        outputs = model(**inputs, output_hidden_states=want_hidden)
        # (B, C) class logits, (B, T, V) token logits, or None (a bare encoder)
        logits = None if self.kind == "encoder" else outputs.logits
        teacher_out = None
        if (args.alpha_kd > 0 or want_hidden or self.pooled_loss) and not cached:
            with torch.no_grad(), self.accelerator.autocast():
                teacher_out = self.teacher(**self._teacher_inputs(inputs), output_hidden_states=want_hidden)
        teacher_logits = None
        if args.alpha_kd > 0 and logits is not None:
            if not cached:
                teacher_logits = teacher_out.logits
            elif self.is_seq2seq:
                teacher_logits = self._cached_token_logits(example_ids, labels, logits)
            else:
                teacher_logits = self.teacher_cache.logits(example_ids)

        # Output terms: task loss on the labels and KD to the teacher, per example or per token; the
        # pooled sentence vectors of a bare encoder.
        if self.kind in ("seq2seq", "mlm"):
            task = args.alpha_task > 0
            if self.kind == "mlm" and labels is None:  # unmasked text: KL at every real token, no CE
                labels, task = self._real_token_labels(inputs), False
            terms = token_level_terms(
                logits,
                teacher_logits,
                labels,
                task=task,
                label_smoothing=self.args.label_smoothing_factor,
                temperature=args.temperature,
                reverse=args.kd_reverse,
                chunk_size=args.kd_chunk_size,
                # A trimmed student's output layer has the kept rows only, so it can only ever emit kept
                # ids; the teacher's distribution is restricted to them (renormalised) to match.
                teacher_vocab=self.teacher_token_ids,
            )
        elif self.kind == "classifier":
            terms = self._class_level_terms(logits, teacher_logits, labels)
        else:
            mask = inputs.get("attention_mask")
            if self.pooled_loss is None:
                teacher_pooled = None
            elif cached:
                last = self.teacher.config.num_hidden_layers
                teacher_pooled = self.teacher_cache.pooled(last, example_ids, self.pooling)
            else:
                teacher_pooled = self._pool(teacher_out.last_hidden_state, mask)
            terms = self._pooled_terms(outputs, teacher_pooled, mask)
        weights = {"task": args.alpha_task, "kd": args.alpha_kd, "pooled": args.alpha_pooled}
        weighted: dict[str, tuple[float, Tensor]] = {
            name: (weights[name], term) for name, term in terms.items()
        }

        # Hidden terms: one per layer pair, encoder pairs then decoder pairs.
        ckas: list[Tensor] = []
        pair_losses: list[Tensor] = []
        if want_hidden:
            if cached:
                states = self._cached_states(outputs, example_ids, inputs, labels)
            else:
                states = self._live_states(outputs, teacher_out, inputs, labels)
            pair_losses, ckas = self._hidden_terms(states)
            if pair_losses:
                stacked = torch.stack(pair_losses)  # (P,)
                hidden = stacked.sum() if args.hidden_reduction == "sum" else stacked.mean()
                weighted["hidden"] = (args.alpha_hidden * self._hidden_schedule_factor(), hidden)

        loss = sum(weight * term for weight, term in weighted.values())
        if not isinstance(loss, Tensor):  # every weighted term was off for this batch
            loss = (outputs.last_hidden_state if logits is None else logits).float().sum() * 0.0
        if model.training and args.stop_on_nan and not bool(torch.isfinite(loss.detach())):
            pairs = dict(zip(self.pair_names, pair_losses, strict=True)) if pair_losses else {}
            raise NonFiniteLossError(self._non_finite_report(weighted, pairs))
        if model.training:
            record = {f"loss/{name}": term for name, (_, term) in weighted.items()}
            record.update({f"cka/{name}": cka for name, cka in zip(self.pair_names, ckas, strict=True)})
            self._record(record)
        if return_outputs:
            # Only the logits: hidden states would otherwise be gathered as predictions during evaluation.
            if self.kind == "encoder":
                return loss, BaseModelOutput(last_hidden_state=outputs.last_hidden_state)
            output_class = {
                "seq2seq": Seq2SeqLMOutput,
                "classifier": SequenceClassifierOutput,
                "mlm": MaskedLMOutput,
            }[self.kind]
            return loss, output_class(loss=loss, logits=logits)
        return loss

    def _non_finite_report(self, weighted: dict, pairs: dict[str, Tensor]) -> str:
        """Which loss components went bad at this step, and where the last good checkpoint is."""
        from ckadistill.runs import last_complete_checkpoint

        values = {name: float(term.detach()) for name, (_, term) in weighted.items() if name != "hidden"}
        values.update({f"hidden pair {name}": float(term.detach()) for name, term in pairs.items()})
        bad = [f"{name} = {value}" for name, value in values.items() if not math.isfinite(value)]
        good = [f"{name} = {value:.4g}" for name, value in values.items() if math.isfinite(value)]
        checkpoint = (
            last_complete_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        )
        kept = (
            f"the last good checkpoint is {checkpoint} (resume from it with --resume_from_checkpoint true)"
            if checkpoint is not None
            else "no checkpoint had been saved yet"
        )
        return (
            f"the training loss is not finite at step {self.state.global_step + 1}: "
            f"{', '.join(bad) or 'the weighted sum overflowed'}"
            f"{' (finite: ' + ', '.join(good) + ')' if good else ''}. Training stopped and nothing was saved "
            f"after it; {kept}. Lower --learning_rate, clip with --max_grad_norm, or train in fp32/bf16 "
            "instead of fp16"
        )

    def _teacher_inputs(self, inputs: dict) -> dict:
        """The student's batch as the teacher reads it: a trimmed student's token ids become the teacher's
        ids of the same tokens (positions, masks and everything else unchanged)."""
        if self.teacher_token_ids is None:
            return inputs
        mapped = dict(inputs)
        for key in ("input_ids", "decoder_input_ids"):
            if mapped.get(key) is not None:
                mapped[key] = to_teacher_ids(mapped[key], self.teacher_token_ids)
        return mapped

    @staticmethod
    def _real_token_labels(inputs: dict) -> Tensor:
        """`(B, T)` labels marking every real token of the input as a target (the input id), -100 elsewhere."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        return ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)

    def _pooled_terms(self, outputs, teacher_pooled: Tensor | None, mask: Tensor | None) -> dict[str, Tensor]:
        """The `pooled` term of a bare encoder: its sentence vectors against the teacher's `(B, d_t)`."""
        if teacher_pooled is None:
            return {}
        x = self._pool(outputs.last_hidden_state, mask)  # (B, d_s)
        y = teacher_pooled.to(x.device)
        if self.pooled_loss == "cosine":
            return {"pooled": cosine_hidden_loss(x, y)}
        if x.shape[0] < 2:  # CKA across the batch needs two sentences; a lone last batch has one
            return {"pooled": x.float().sum() * 0.0}
        return {"pooled": cka_loss(x, y, sqrt=self.distill_args.cka_sqrt)}

    def _pool(self, h: Tensor, mask: Tensor | None) -> Tensor:
        return h[:, 0] if self.pooling == "cls" else mean_pool(h, mask)

    def _add_decoder_inputs(self, model, inputs: dict, labels: Tensor | None) -> None:
        """Give both models the same decoder inputs, built from the labels by the student's own rule."""
        if labels is None:
            raise ValueError(
                "encoder-decoder distillation needs `labels` (target token ids, -100 = padding) in every "
                "batch: tokenise the targets as labels and pad them with transformers.DataCollatorForSeq2Seq"
            )
        if "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = self._decoder_input_ids(labels)
        inputs["use_cache"] = False  # no key/value cache to build in a single full-sequence pass

    def _decoder_input_ids(self, labels: Tensor) -> Tensor:
        """`(B, T)` decoder inputs from labels by the student's own rule (the teacher cache uses it too)."""
        student = self.accelerator.unwrap_model(self.model)
        return student.prepare_decoder_input_ids_from_labels(labels=labels)

    def _class_level_terms(
        self, logits: Tensor, teacher_logits: Tensor | None, labels: Tensor | None
    ) -> dict[str, Tensor]:
        """Task loss and KD on `(B, C)` class logits (or `(B, 1)` regression outputs)."""
        args, terms = self.distill_args, {}
        if labels is not None and args.alpha_task > 0:
            terms["task"] = task_loss(
                logits, labels, regression=self.regression, label_smoothing=self.args.label_smoothing_factor
            )
        if teacher_logits is not None:
            terms["kd"] = logit_distillation_loss(
                logits,
                teacher_logits.to(logits.device),
                regression=self.regression,
                temperature=args.temperature,
                reverse=args.kd_reverse,
            )
        return terms

    def _live_states(self, outputs, teacher_out, inputs: dict, labels: Tensor | None) -> list:
        """Per pair, the (student, teacher) rows to compare: real source tokens for encoder pairs
        (`attention_mask`), target positions for decoder pairs (`target_mask`); encoder pairs first."""
        source_mask = inputs.get("attention_mask")  # (B, S); None = every token is real
        if self.is_seq2seq:
            stacks = [
                (
                    outputs.encoder_hidden_states,
                    teacher_out.encoder_hidden_states,
                    self.layer_pairs,
                    source_mask,
                ),
                (
                    outputs.decoder_hidden_states,
                    teacher_out.decoder_hidden_states,
                    self.decoder_layer_pairs,
                    target_mask(labels),  # (B, T)
                ),
            ]
        else:
            stacks = [(outputs.hidden_states, teacher_out.hidden_states, self.layer_pairs, source_mask)]
        sequence_level = self.distill_args.hidden_level == "sequence"
        return [
            rows
            for student, teacher, pairs, mask in stacks
            for rows in layer_pair_rows(student, teacher, pairs, mask, sequence_level=sequence_level)
        ]

    def _cached_states(
        self, outputs, example_ids: Tensor, inputs: dict, labels: Tensor | None
    ) -> list[tuple[Tensor, Tensor]]:
        """As `_live_states`, with the teacher's rows read from the cache."""
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(inputs["input_ids"].shape, device=inputs["input_ids"].device)  # (B, T)
        if self.is_seq2seq:
            stacks = [
                (outputs.encoder_hidden_states, self.layer_pairs, mask, False),
                (outputs.decoder_hidden_states, self.decoder_layer_pairs, target_mask(labels), True),
            ]
        else:
            stacks = [(outputs.hidden_states, self.layer_pairs, mask, False)]
        sequence_level = self.distill_args.hidden_level == "sequence"
        states = []
        for student, pairs, stack_mask, decoder in stacks:
            lengths = stack_mask.bool().sum(dim=1)  # (B,)
            for s, t in pairs:  # real-token rows of both sides, in the same batch-major order
                x = select_tokens(student[s], stack_mask)
                y = self._cached_rows(t, example_ids, stack_mask, decoder=decoder)
                states.append(
                    (mean_pool(x, lengths=lengths), mean_pool(y, lengths=lengths))
                    if sequence_level
                    else (x, y)
                )
        return states

    def _cached_token_logits(self, example_ids: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        """`(B, T, V_t)` cached teacher logits at the target positions; other positions are 0 and never
        read (every token-level term masks them out)."""
        mask = target_mask(labels)  # (B, T)
        rows = self.teacher_cache.token_logits(example_ids)  # (n, V_t)
        if rows.shape[0] != int(mask.sum()):
            raise RuntimeError(
                f"the teacher cache holds {rows.shape[0]} target positions for this batch but it has "
                f"{int(mask.sum())}: the training data changed after the cache was built"
            )
        full = logits.new_zeros((*mask.shape, rows.shape[1]), dtype=torch.float32)
        full[mask] = rows.to(full.device)
        return full

    def _hidden_schedule_factor(self) -> float:
        """1 throughout for 'constant'; 1 → 0 linearly over the optimiser steps for 'linear_decay'."""
        if self.distill_args.hidden_schedule == "constant" or not self.state.max_steps:
            return 1.0
        return max(0.0, 1.0 - self.state.global_step / self.state.max_steps)

    def _cached_rows(self, layer: int, example_ids: Tensor, mask: Tensor, *, decoder: bool = False) -> Tensor:
        """`(n, d_t)` cached teacher rows of a batch, checked against the batch's real-token count."""
        rows = self.teacher_cache.hidden_rows(layer, example_ids, decoder=decoder)
        if rows.shape[0] != int(mask.bool().sum()):
            raise RuntimeError(
                f"the teacher cache holds {rows.shape[0]} tokens for this batch but it has "
                f"{int(mask.bool().sum())}: the training data changed after the cache was built"
            )
        return rows.to(mask.device)

    def _hidden_terms(self, states: Sequence[tuple[Tensor, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-pair hidden losses (empty when the hidden term is off) and per-pair CKA values (detached).

        `states[k]` is the k-th pair's (student, teacher) rows, `(n, d_s)` and `(n, d_t)`.
        """
        args = self.distill_args
        losses, ckas = [], []
        draws: dict[int, Tensor] = {}  # --cka_max_tokens: one draw of rows per row count (= per stack)
        for k, (x, y) in enumerate(states):
            cka_x, cka_y = self._cka_rows(x, y, draws)
            if args.cka_scope == "global" and args.hidden_loss in ("cka", "none"):
                # The rows of every process (no-op in one process).
                cka_x, cka_y = gather_rows(cka_x), gather_rows(cka_y)
            if self.uses_hidden and args.hidden_loss == "cka":
                loss = cka_loss(cka_x, cka_y, sqrt=args.cka_sqrt)
                gap = 1.0 - loss.detach()
                ckas.append(gap.square() if args.cka_sqrt else gap)
                losses.append(loss)
                continue
            if self.uses_hidden and args.hidden_loss == "cosine":
                losses.append(cosine_hidden_loss(x, y))
            elif self.uses_hidden and args.hidden_loss == "mse_proj":
                losses.append(projected_mse_loss(x, y, self.projections[k]))
            with torch.no_grad():
                ckas.append(linear_cka(cka_x.detach(), cka_y))
        return losses, ckas

    def _cka_rows(self, x: Tensor, y: Tensor, draws: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        """The `(n, d)` rows CKA sees: all of them, or `--cka_max_tokens` drawn without replacement.

        The draw depends only on the seed, the optimiser step and the row count, so a resumed run draws
        what the uninterrupted one did; pairs of one stack (same count) share it.
        """
        cap, n = self.distill_args.cka_max_tokens, x.shape[0]
        if cap is None or n <= cap:
            return x, y
        if n not in draws:
            generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
            draws[n] = torch.randperm(n, generator=generator)[:cap].sort().values.to(x.device)  # (cap,)
        return x.index_select(0, draws[n]), y.index_select(0, draws[n])

    # ---- evaluation with generation ------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.kind in ("mlm", "encoder"):
            # Raw text has no labels, so the Trainer would skip the loss; evaluation of a task-agnostic
            # student is its distillation loss.
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                return self.compute_loss(model, inputs).detach(), None, None
        # With --predict_with_generate the Seq2SeqTrainer generates, then scores the batch by the
        # student's own loss on `labels`; report the distillation loss instead, as evaluation without
        # generation does, so eval_loss means one thing whatever the flags.
        loss, predictions, labels = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
        )
        if loss is not None and self.args.predict_with_generate and not prediction_loss_only:
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, self._prepare_inputs(inputs)).detach()
        return loss, predictions, labels

    # ---- logging -------------------------------------------------------------------------------

    def _record(self, values: dict[str, Tensor]) -> None:
        """Add one micro-batch's loss components to the sums averaged at the next log."""
        for name, value in values.items():
            value = value.detach().float()
            self._log_sums[name] = self._log_sums[name] + value if name in self._log_sums else value
        self._log_batches += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss components, averaged since the previous log (and over processes), to training logs."""
        if "loss" in logs and self._log_batches:
            names = list(self._log_sums)
            means = torch.stack([self._log_sums[n] for n in names]) / self._log_batches  # (K,)
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update(zip(names, means.tolist(), strict=True))
            self._log_sums, self._log_batches = {}, 0
        super().log(logs, start_time)

    # ---- projection heads (mse_proj) -----------------------------------------------------------

    def create_optimizer(self, model=None):
        # The projections are not part of the student, so the Trainer's optimizer would not see them;
        # they get their own param group (with the weight decay of the student's matrices).
        optimizer = super().create_optimizer(model)
        if self.projections is not None:
            known = {id(p) for group in optimizer.param_groups for p in group["params"]}
            params = [p for p in self.projections.parameters() if id(p) not in known]
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": self.args.weight_decay})
        return optimizer

    def _save_optimizer_and_scheduler(self, output_dir):
        # Checkpoints carry the projections in a file of their own, written with the optimizer state (so
        # before trainer_state.json, which marks a checkpoint finished); the final student directory
        # (save_model) never gets them.
        super()._save_optimizer_and_scheduler(output_dir)
        if self.projections is not None and self.args.should_save:
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            save_file(state, os.path.join(output_dir, PROJECTIONS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.projections is not None:
            path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
            if not os.path.isfile(path):
                raise ValueError(
                    f"{path} is missing: the checkpoint was not written by an --hidden_loss mse_proj run, "
                    "so its projections cannot be restored; resume with the hidden loss it was trained with"
                )
            self.projections.load_state_dict(load_file(path, device=str(self.args.device)))
            logger.info("Restored the hidden-state projections from %s", path)
