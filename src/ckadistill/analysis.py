"""Layer-by-layer similarity between a teacher and a student: the CKA matrix, its heatmap and CSV.

`layer_cka_matrix` runs both models on the same batches and compares every teacher hidden state with
every student hidden state by linear CKA, with the real tokens of all batches pooled into one sample.
CKA is a ratio, so the CKA of the pooled tokens is not the mean of per-batch CKAs; the token rows of
every layer are therefore collected first and compared once at the end.
"""

from __future__ import annotations

import csv
import logging
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ckadistill.losses import linear_cka, select_tokens

logger = logging.getLogger(__name__)

PARTS = ("encoder", "decoder")

# Batch entries handed to the models; anything else in a batch (labels, ids, texts) is ignored.
# Encoder-decoders take no token_type_ids.
_ENCODER_ONLY_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ENCODER_DECODER_INPUTS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def _hidden_states(model, batch: Mapping[str, Tensor], part: str) -> tuple[Tensor, ...]:
    """Run `model` on the model inputs of `batch`; the `(B, T, d)` states of one stack, embeddings first."""
    device = next(model.parameters()).device
    keys = _ENCODER_DECODER_INPUTS if model.config.is_encoder_decoder else _ENCODER_ONLY_INPUTS
    inputs = {k: batch[k].to(device) for k in keys if k in batch}
    outputs = model(**inputs, output_hidden_states=True, return_dict=True)
    if not model.config.is_encoder_decoder:
        return outputs.hidden_states
    return outputs.encoder_hidden_states if part == "encoder" else outputs.decoder_hidden_states


def _token_mask(batch: Mapping[str, Tensor], part: str) -> Tensor:
    """`(B, T)` mask of the real tokens of one stack: the (decoder) attention mask, else every token."""
    ids_key, mask_key = (
        ("input_ids", "attention_mask")
        if part == "encoder"
        else ("decoder_input_ids", "decoder_attention_mask")
    )
    if mask_key in batch:
        return batch[mask_key]
    if ids_key not in batch:
        raise ValueError(f"a batch for the {part} CKA map needs {ids_key!r}; got keys {sorted(batch)}")
    return torch.ones_like(batch[ids_key])


@torch.no_grad()
def layer_cka_matrix(
    teacher,
    student,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    part: str = "encoder",
    device: torch.device | str | None = None,
    teacher_token_ids: Tensor | None = None,
) -> np.ndarray:
    """Linear CKA between every teacher and every student hidden state of one stack.

    Args:
        teacher, student: Hugging Face models (base or with heads) sharing a tokenizer; both
            encoder-only or both encoder-decoder (BART-like, T5, or a bert2bert `EncoderDecoderModel`,
            whose outputs carry `encoder_hidden_states` and `decoder_hidden_states` the same way).
            They are run in eval mode and restored after.
        batches: dicts of `(B, T)` tensors: `input_ids`, `attention_mask` (optional
            `token_type_ids`), and for encoder-decoders `decoder_input_ids` and optional
            `decoder_attention_mask`. Tokens are selected by `attention_mask` for the encoder part
            and by `decoder_attention_mask` for the decoder part (every token when a mask is absent).
        part: `"encoder"` or `"decoder"`; encoder-only models have only `"encoder"`.
        device: where the CKAs are computed; defaults to the teacher's device.
        teacher_token_ids: for a student with a trimmed vocabulary (`--trim_vocab`), whose tokenizer made
            the batches: the `(V_s,)` teacher id of each student id; the teacher reads the mapped ids.

    Returns:
        `(L_t + 1, L_s + 1)` float64 array: row = teacher hidden state, column = student hidden
        state, index 0 = embeddings. Token rows of all batches are pooled (n real tokens in all),
        held as float32, and each entry is `linear_cka` on the `(n, d_s)` and `(n, d_t)` rows.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if teacher.config.is_encoder_decoder != student.config.is_encoder_decoder:
        raise ValueError(
            f"teacher ({teacher.config.model_type}) and student ({student.config.model_type}) must both be "
            "encoder-only or both encoder-decoder"
        )
    if part == "decoder" and not teacher.config.is_encoder_decoder:
        raise ValueError(
            f"part='decoder' needs encoder-decoder models; {teacher.config.model_type} has no decoder"
        )
    device = torch.device(device) if device is not None else next(teacher.parameters()).device

    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    teacher_rows: list[list[Tensor]] = []  # [layer][batch] -> (n_b, d_t)
    student_rows: list[list[Tensor]] = []  # [layer][batch] -> (n_b, d_s)
    num_tokens = 0
    try:
        for step, batch in enumerate(batches):
            mask = _token_mask(batch, part)  # (B, T)
            teacher_batch = dict(batch)
            if teacher_token_ids is not None:
                for key in ("input_ids", "decoder_input_ids"):
                    if key in batch:
                        teacher_batch[key] = teacher_token_ids[batch[key]]  # (B, T) teacher ids
            for model, inputs, rows in (
                (teacher, teacher_batch, teacher_rows),
                (student, batch, student_rows),
            ):
                states = _hidden_states(model, inputs, part)
                if not rows:
                    rows.extend([] for _ in states)
                for layer, h in enumerate(states):
                    rows[layer].append(select_tokens(h.float().cpu(), mask.cpu()))  # (n_b, d)
            num_tokens += int(mask.bool().sum())
            logger.debug("CKA map (%s): batch %d, %d tokens so far", part, step + 1, num_tokens)
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    if num_tokens < 2:
        raise ValueError(f"the CKA map needs at least 2 real tokens in the batches, got {num_tokens}")

    teacher_layers = [torch.cat(r).to(device) for r in teacher_rows]  # each (n, d_t)
    student_layers = [torch.cat(r).to(device) for r in student_rows]  # each (n, d_s)
    logger.info(
        "CKA map (%s): %d teacher x %d student hidden states over %d tokens",
        part,
        len(teacher_layers),
        len(student_layers),
        num_tokens,
    )
    matrix = np.zeros((len(teacher_layers), len(student_layers)), dtype=np.float64)
    for t, y in enumerate(teacher_layers):
        for s, x in enumerate(student_layers):
            matrix[t, s] = float(linear_cka(x, y))
    return matrix


def save_cka_heatmap(
    matrix: np.ndarray, path_png: str | Path, *, title: str, pairs: list[tuple[int, int]] | None = None
) -> None:
    """Write the `(L_t + 1, L_s + 1)` CKA matrix as a PNG heatmap, mapped `(student, teacher)` pairs boxed.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend state). Cell values are
    printed when the matrix is small enough to read them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    matrix = np.asarray(matrix, dtype=np.float64)
    n_teacher, n_student = matrix.shape
    fig = Figure(figsize=(max(5.5, 2.5 + 0.5 * n_student), max(4.5, 1.8 + 0.4 * n_teacher)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_xticks(range(n_student))
    ax.set_yticks(range(n_teacher))
    ax.set_xlabel("student hidden state (0 = embeddings)")
    ax.set_ylabel("teacher hidden state (0 = embeddings)")
    ax.set_title("\n".join(textwrap.wrap(title, width=60)), fontsize="medium")
    if n_teacher <= 25 and n_student <= 25:
        for t in range(n_teacher):
            for s in range(n_student):
                colour = "black" if matrix[t, s] > 0.6 else "white"
                ax.text(s, t, f"{matrix[t, s]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    for s, t in pairs or []:
        ax.add_patch(Rectangle((s - 0.5, t - 0.5), 1.0, 1.0, fill=False, edgecolor="red", linewidth=2.0))
    fig.tight_layout()
    Path(path_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=120)


def save_cka_csv(matrix: np.ndarray, path_csv: str | Path) -> None:
    """Write the matrix as CSV: a header of student indices, then one row per teacher index."""
    matrix = np.asarray(matrix, dtype=np.float64)
    Path(path_csv).parent.mkdir(parents=True, exist_ok=True)
    with open(path_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["teacher\\student", *range(matrix.shape[1])])
        for t, row in enumerate(matrix):
            writer.writerow([t, *(f"{v:.8f}" for v in row)])


def load_cka_csv(path_csv: str | Path) -> np.ndarray:
    """Read back a matrix written by `save_cka_csv`: `(L_t + 1, L_s + 1)` float64."""
    with open(path_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return np.array([[float(v) for v in row[1:]] for row in rows[1:]], dtype=np.float64)


def make_batches(
    tokenizer,
    texts: list[str],
    targets: list[str] | None,
    *,
    encoder_decoder: bool,
    batch_size: int,
    max_length: int,
) -> list[dict]:
    """Tokenised batches: `input_ids`/`attention_mask` `(B, T)`, plus `decoder_input_ids` and
    `decoder_attention_mask` `(B, T')` from the targets (or the texts) for encoder-decoders."""
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        enc = tokenizer(
            chunk,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if encoder_decoder:
            chunk_targets = targets[start : start + batch_size] if targets is not None else chunk
            dec = tokenizer(
                text_target=chunk_targets,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_token_type_ids=False,
                return_tensors="pt",
            )
            batch["decoder_input_ids"] = dec["input_ids"]
            batch["decoder_attention_mask"] = dec["attention_mask"]
        batches.append(batch)
    return batches
