"""`DistillationTrainer`: a `transformers.Trainer` that changes what loss is computed, and logs its parts.

    loss = alpha_task · task(labels) + alpha_kd · KD(teacher logits) + alpha_hidden · Σ_pairs hidden(pair)

- task: cross-entropy over labelled rows (label -100 = unlabelled, ignored; an all-unlabelled batch
  gives exactly 0), or MSE for regression (`num_labels == 1`).
- KD: `KL(p_teacher || p_student)` at temperature T, times T² (MSE between outputs for regression).
- hidden: one term per `(student, teacher)` pair of `hidden_states` indices, over the real tokens
  of the batch (`attention_mask`) or over the examples' mean-pooled states (`hidden_level sequence`):
  `1 - CKA` (default), cosine, projected MSE; summed (the paper) or averaged over pairs; its weight
  is constant or decays linearly to 0 over training (`hidden_schedule`).

The teacher is a plain attribute: frozen, in eval mode, run under `no_grad`, on the student's
device, and never handed to `accelerator.prepare`, so data-parallel wrappers only ever see the
student. Everything else (checkpoints, resume, mixed precision, accumulation, logging backends)
is the Trainer's own. With `--cache_teacher`, the teacher runs once over the training set before
training and its outputs are replayed (`ckadistill.teacher_cache`); evaluation still runs it live.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ckadistill.config import DistillArguments
from ckadistill.data import UNLABELLED
from ckadistill.losses import (
    HiddenProjection,
    cka_loss,
    cosine_hidden_loss,
    kl_logits_loss,
    linear_cka,
    mean_pool,
    projected_mse_loss,
    select_tokens,
)
from ckadistill.teacher_cache import EXAMPLE_ID, TeacherCache

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "hidden_projections.safetensors"  # in checkpoint folders only, never in the student


def is_regression(config) -> bool:
    """A single-output head is a regression head (GLUE STS-B style)."""
    return config.problem_type == "regression" or config.num_labels == 1


def task_loss(logits: Tensor, labels: Tensor, *, regression: bool, label_smoothing: float = 0.0) -> Tensor:
    """Supervised loss over the labelled rows of a batch.

    Args:
        logits: `(B, C)` class logits, or `(B, 1)` predictions for regression.
        labels: `(B,)` class ids or targets; -100 marks an unlabelled row, which is skipped.
        regression: MSE on the targets instead of cross-entropy.
        label_smoothing: cross-entropy label smoothing (classification only).

    Returns:
        0-dim fp32 mean over labelled rows; exactly 0 (graph kept, zero gradient) when none is labelled.
    """
    keep = labels != UNLABELLED  # (B,)
    if not bool(keep.any()):
        return logits.float().sum() * 0.0
    if regression:
        return F.mse_loss(logits.float().reshape(-1)[keep], labels[keep].float())
    return F.cross_entropy(logits[keep].float(), labels[keep].long(), label_smoothing=label_smoothing)


def logit_distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, regression: bool, temperature: float, reverse: bool
) -> Tensor:
    """KL between softened class distributions (`(B, C)` logits), or MSE between outputs for regression."""
    if regression:
        return F.mse_loss(student_logits.float().reshape(-1), teacher_logits.float().reshape(-1))
    return kl_logits_loss(student_logits, teacher_logits, temperature=temperature, reverse=reverse)


def pair_name(student_index: int, teacher_index: int, stack: str = "enc") -> str:
    """Log name of a layer pair, e.g. `enc_2_4`."""
    return f"{stack}_{student_index}_{teacher_index}"


class DistillationTrainer(Trainer):
    """Trainer for a student learning from a frozen teacher; see the module docstring for the loss.

    Args (besides the Trainer's own):
        teacher: a sequence-classification model with the student's label set and vocabulary.
        distill_args: loss weights, temperature, hidden loss, reduction, `cka_sqrt`.
        layer_pairs: `(student, teacher)` indices into `hidden_states` (0 = embeddings). Per-pair CKA
            is logged for every pair (computed without gradient when the hidden loss is not CKA).
    """

    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        teacher: PreTrainedModel,
        distill_args: DistillArguments,
        layer_pairs: Sequence[tuple[int, int]] = (),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        student_config = self.model.config
        if is_regression(student_config) != is_regression(teacher.config) or (
            student_config.num_labels != teacher.config.num_labels
        ):
            raise ValueError(
                f"teacher ({teacher.config.num_labels} outputs) and student ({student_config.num_labels} outputs) "
                "need the same head: build the student from the teacher or pass a student with the teacher's labels"
            )
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.distill_args = distill_args
        self.regression = is_regression(student_config)
        self.layer_pairs = tuple((int(s), int(t)) for s, t in layer_pairs)
        self.pair_names = [pair_name(s, t) for s, t in self.layer_pairs]
        d_s, d_t = student_config.hidden_size, teacher.config.hidden_size
        if distill_args.uses_hidden and distill_args.hidden_loss == "cosine" and d_s != d_t:
            raise ValueError(
                f"--hidden_loss cosine needs equal widths, but the student is {d_s} wide and the teacher {d_t}: "
                "use --hidden_loss cka (any widths) or mse_proj (learned projection)"
            )
        self.projections: nn.ModuleList | None = None
        if distill_args.uses_hidden and distill_args.hidden_loss == "mse_proj":
            if self.args.world_size > 1:
                raise ValueError(
                    "--hidden_loss mse_proj trains projections outside the student, which data-parallel "
                    "training would not synchronise: run it in one process, or use --hidden_loss cka"
                )
            projections = [HiddenProjection(d_s, d_t) for _ in self.layer_pairs]
            self.projections = nn.ModuleList(projections).to(self.args.device)
        self._log_sums: dict[str, Tensor] = {}
        self._log_batches = 0
        self.teacher_cache: TeacherCache | None = None
        if distill_args.cache_teacher and self.train_dataset is not None:
            self.teacher_cache = self._build_teacher_cache()

    def _build_teacher_cache(self) -> TeacherCache:
        dataset = self.train_dataset
        if EXAMPLE_ID not in dataset.column_names:
            dataset = self.train_dataset = dataset.add_column(EXAMPLE_ID, list(range(len(dataset))))
        if dataset[EXAMPLE_ID] != list(range(len(dataset))):
            raise ValueError(f"column {EXAMPLE_ID!r} must number the training rows 0..N-1 in order")
        layers = sorted({t for _, t in self.layer_pairs})
        num_tokens = sum(len(ids) for ids in dataset["input_ids"])
        need = TeacherCache.estimate_bytes(
            num_tokens,
            len(dataset),
            self.teacher.config.hidden_size,
            len(layers),
            self.teacher.config.num_labels,
        )
        limit = self.distill_args.cache_teacher_max_gb * 2**30
        if need > limit:
            raise ValueError(
                f"--cache_teacher would hold {need / 2**30:.1f} GiB of teacher outputs, above "
                f"--cache_teacher_max_gb {self.distill_args.cache_teacher_max_gb}: raise the limit, shorten "
                "--max_length, use fewer layer pairs, or drop --cache_teacher"
            )
        return TeacherCache.build(
            self.teacher,
            dataset,
            self.data_collator,
            layers,
            batch_size=self.args.per_device_eval_batch_size,
            device=self.args.device,
        )

    def _set_signature_columns_if_needed(self):
        # The Trainer drops dataset columns the model's forward does not take; the cache needs the row ids.
        super()._set_signature_columns_if_needed()
        if self.teacher_cache is not None and EXAMPLE_ID not in self._signature_columns:
            self._signature_columns.append(EXAMPLE_ID)

    # ---- the loss ------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.distill_args
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)  # the student's own loss is not used
        example_ids = inputs.pop(EXAMPLE_ID, None)
        cached = self.teacher_cache is not None and example_ids is not None and model.training
        want_hidden = bool(self.layer_pairs)
        outputs = model(**inputs, output_hidden_states=want_hidden)
        logits = outputs.logits  # (B, C)

        weighted: dict[str, tuple[float, Tensor]] = {}
        if labels is not None and args.alpha_task > 0:
            task = task_loss(
                logits, labels, regression=self.regression, label_smoothing=self.args.label_smoothing_factor
            )
            weighted["task"] = (args.alpha_task, task)
        if (args.alpha_kd > 0 or want_hidden) and not cached:
            with torch.no_grad(), self.accelerator.autocast():
                teacher_out = self.teacher(**inputs, output_hidden_states=want_hidden)
        if args.alpha_kd > 0:
            teacher_logits = self.teacher_cache.logits(example_ids) if cached else teacher_out.logits
            kd = logit_distillation_loss(
                logits,
                teacher_logits.to(logits.device),
                regression=self.regression,
                temperature=args.temperature,
                reverse=args.kd_reverse,
            )
            weighted["kd"] = (args.alpha_kd, kd)

        ckas: list[Tensor] = []
        if want_hidden:
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = torch.ones(inputs["input_ids"].shape, device=logits.device)  # (B, T)
            sequence_level = args.hidden_level == "sequence"
            if cached:  # real-token rows of both sides, in the same batch-major order
                states = [
                    (select_tokens(outputs.hidden_states[s], mask), self._cached_rows(t, example_ids, mask))
                    for s, t in self.layer_pairs
                ]
                if sequence_level:
                    lengths = mask.bool().sum(dim=1)  # (B,)
                    states = [
                        (mean_pool(x, lengths=lengths), mean_pool(y, lengths=lengths)) for x, y in states
                    ]
                mask = None
            else:
                states = [
                    (outputs.hidden_states[s], teacher_out.hidden_states[t]) for s, t in self.layer_pairs
                ]
                if sequence_level:
                    states = [(mean_pool(x, mask), mean_pool(y, mask)) for x, y in states]
                    mask = None
            pair_losses, ckas = self._hidden_terms(states, mask)
            if pair_losses:
                stacked = torch.stack(pair_losses)  # (P,)
                hidden = stacked.sum() if args.hidden_reduction == "sum" else stacked.mean()
                weighted["hidden"] = (args.alpha_hidden * self._hidden_schedule_factor(), hidden)

        loss = sum(weight * term for weight, term in weighted.values())
        if not isinstance(loss, Tensor):  # every weighted term was off for this batch
            loss = logits.float().sum() * 0.0
        if model.training:
            record = {f"loss/{name}": term for name, (_, term) in weighted.items()}
            record.update({f"cka/{name}": cka for name, cka in zip(self.pair_names, ckas, strict=True)})
            self._record(record)
        if return_outputs:
            # Only the logits: hidden states would otherwise be gathered as predictions during evaluation.
            return loss, SequenceClassifierOutput(loss=loss, logits=logits)
        return loss

    def _hidden_schedule_factor(self) -> float:
        """1 throughout for 'constant'; 1 → 0 linearly over the optimiser steps for 'linear_decay'."""
        if self.distill_args.hidden_schedule == "constant" or not self.state.max_steps:
            return 1.0
        return max(0.0, 1.0 - self.state.global_step / self.state.max_steps)

    def _cached_rows(self, layer: int, example_ids: Tensor, mask: Tensor) -> Tensor:
        """`(n, d_t)` cached teacher rows of a batch, checked against the batch's real-token count."""
        rows = self.teacher_cache.hidden_rows(layer, example_ids)
        if rows.shape[0] != int(mask.bool().sum()):
            raise RuntimeError(
                f"the teacher cache holds {rows.shape[0]} tokens for this batch but it has "
                f"{int(mask.bool().sum())}: the training data changed after the cache was built"
            )
        return rows.to(mask.device)

    def _hidden_terms(
        self, states: Sequence[tuple[Tensor, Tensor]], mask: Tensor | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per-pair hidden losses (empty when the hidden term is off) and per-pair CKA values (detached).

        `states[k]` is the k-th pair's (student, teacher) states: `(B, T, d_s)` and `(B, T, d_t)` with a
        `(B, T)` mask, or already-selected rows `(n, d_s)` and `(n, d_t)` with `mask=None`.
        """
        args = self.distill_args
        losses, ckas = [], []
        for k, (x, y) in enumerate(states):
            if args.uses_hidden and args.hidden_loss == "cka":
                loss = cka_loss(x, y, mask, sqrt=args.cka_sqrt)
                gap = 1.0 - loss.detach()
                ckas.append(gap.square() if args.cka_sqrt else gap)
                losses.append(loss)
                continue
            if args.uses_hidden and args.hidden_loss == "cosine":
                losses.append(cosine_hidden_loss(x, y, mask))
            elif args.uses_hidden and args.hidden_loss == "mse_proj":
                losses.append(projected_mse_loss(x, y, self.projections[k], mask))
            with torch.no_grad():
                ckas.append(linear_cka(x.detach(), y, mask))
        return losses, ckas

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

    def _save_checkpoint(self, model, trial):
        # Checkpoints carry the projections in a file of their own, so resuming restores them; the
        # final student directory (save_model) never gets them.
        super()._save_checkpoint(model, trial)
        if self.projections is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            save_file(state, os.path.join(folder, PROJECTIONS_FILE))

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
