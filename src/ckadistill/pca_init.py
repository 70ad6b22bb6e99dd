"""PCA initialisation: keep the teacher's top principal directions of its residual stream.

Like `slice`, but the student's residual width is the teacher's top-d_s principal directions measured on
sample text instead of its first d_s coordinates; every weight reading or writing the residual stream is
rotated into that basis (a Minitron-style width reduction). Used by `students.make_student(init="pca")`;
this module never imports `students` (the tensor cutting both use lives in `ckadistill.slicing`).
"""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ckadistill.families import get_family
from ckadistill.slicing import sliced_state_dict, teacher_key

logger = logging.getLogger(__name__)


def _teacher_batches(tokenizer, texts: list[str], max_length: int, batch_size: int = 16):
    """Padded `(B, T)` input ids and attention masks of the sample texts."""
    if tokenizer.pad_token is None:
        raise ValueError("--init pca batches the sample text: the teacher's tokenizer needs a pad token")
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _teacher_states(teacher: PreTrainedModel, ids: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """Every hidden state of the teacher's body, `(B, T, d_t)` each; an encoder-decoder reads the same
    text on both sides (teacher forcing), so one mask serves all.

    The body is `base_model` (BartModel, T5Model, BertModel: task heads are not run). An
    `EncoderDecoderModel` has no separate body (`base_model` is the model itself), so for bert2bert the
    whole model runs, decoder LM head included, and its encoder and decoder states come back the same
    way as BART's."""
    ids, mask = ids.to(teacher.device), mask.to(teacher.device)
    body = teacher.base_model
    if teacher.config.is_encoder_decoder:
        out = body(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=ids,
            decoder_attention_mask=mask,
            output_hidden_states=True,
        )
        return tuple(out.encoder_hidden_states) + tuple(out.decoder_hidden_states)
    return tuple(body(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)


def pca_basis(
    teacher: PreTrainedModel, tokenizer, texts: list[str], width: int, *, max_length: int = 128
) -> tuple[Tensor, dict]:
    """The top-`width` principal directions of the teacher's residual stream on `texts`.

    One basis serves every layer (the residual connections carry one coordinate system through the
    whole network; BART's encoder and decoder share the embedding matrix, and a decoder's
    cross-attention reads the encoder's stream, so bert2bert's two stacks need one basis too). Each hidden state's second
    moment is normalised to unit trace before pooling, so no layer dominates by its scale. The
    moment is not centred: the weights act on the raw states, mean included.

    Returns:
        `(d_t, width)` orthonormal columns (fp32, CPU), and statistics for the provenance record.
    """
    d_t = get_family(teacher.config).width_of(teacher.config)
    moments: list[Tensor] = []
    tokens = 0
    for ids, mask in _teacher_batches(tokenizer, texts, max_length):
        keep = mask.bool().to(teacher.device)
        for index, h in enumerate(_teacher_states(teacher, ids, mask)):
            x = h[keep].double().cpu()  # (n, d_t) real tokens
            if index == len(moments):
                moments.append(torch.zeros(d_t, d_t, dtype=torch.float64))
            moments[index] += x.T @ x  # (d_t, d_t)
        tokens += int(mask.sum())
    pooled = sum(m / m.trace().clamp_min(1e-30) for m in moments)
    eigenvalues, eigenvectors = torch.linalg.eigh(pooled)  # ascending
    order = torch.argsort(eigenvalues, descending=True)[:width]
    explained = float(eigenvalues[order].sum() / eigenvalues.sum())
    stats = {"texts": len(texts), "tokens": tokens, "max_length": max_length, "explained_variance": explained}
    return eigenvectors[:, order].float(), stats


def _fit_norms(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    layer_choice: list[list[int]],
    basis: Tensor,
    batches: list[tuple[Tensor, Tensor]],
) -> dict[str, Tensor]:
    """Student normalisation parameters fitted so that `Norm_s(Uᵀx) ≈ Uᵀ Norm_t(x)` on sample tokens.

    Why a fit: a LayerNorm centres over coordinates and scales each coordinate by its own gain, and
    neither commutes with a rotation `U`; the student's norm also averages over `d_s` coordinates
    instead of `d_t`. Its per-coordinate gain and bias are the only freedom left, so each rotated
    coordinate `j` gets the least-squares line from `Norm_s(Uᵀx)_j` to `(Uᵀ Norm_t(x))_j`, measured on
    the teacher's own norm inputs `x` (RMSNorm, T5: gain only, no intercept). Exact when the teacher's
    gain is constant and `U` spans the states; the best diagonal map otherwise.

    A norm the body never runs (a masked-LM head's, when only `base_model` is run) has no samples: it
    keeps its rotated bias and takes the mean of the teacher's gain as a constant gain, which is the
    exact answer when that gain is constant.
    """
    family = get_family(teacher.config)
    teacher_keys = set(teacher.state_dict())
    modules: dict[str, list[str]] = {}  # teacher norm module -> student norm parameters taken from it
    for name in student.state_dict():
        if re.search(family.norms, name):
            module = teacher_key(name, family, layer_choice, teacher_keys).rsplit(".", 1)[0]
            modules.setdefault(module, []).append(name)
    sums = {m: torch.zeros(5, basis.shape[1], dtype=torch.float64) for m in modules}  # n, n², t, t·n, 1
    current: dict[str, Tensor] = {}

    def hook(module_name: str):
        def record(_module, inputs, output) -> None:
            keep = current["mask"]
            x = inputs[0][keep].float().cpu() @ basis  # (n, d_s) rotated norm input
            t = output[keep].float().cpu() @ basis  # (n, d_s) rotated norm output
            if family.norm_has_bias:
                x = x - x.mean(dim=-1, keepdim=True)
            x = (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)).double()  # the student's norm
            t = t.double()
            sums[module_name] += torch.stack(
                [x.sum(0), x.pow(2).sum(0), t.sum(0), (t * x).sum(0), torch.full_like(x[0], len(x))]
            )

        return record

    handles = [teacher.get_submodule(m).register_forward_hook(hook(m)) for m in modules]
    try:
        for ids, mask in batches:
            current["mask"] = mask.bool().to(teacher.device)
            _teacher_states(teacher, ids, mask)
    finally:
        for handle in handles:
            handle.remove()

    fitted: dict[str, Tensor] = {}
    teacher_state = teacher.state_dict()
    for module, (s_x, s_xx, s_t, s_tx, n) in sums.items():
        if not bool((n > 0).all()):
            logger.info("pca: %s saw no tokens; its gain becomes the mean of the teacher's", module)
            gain = teacher_state[f"{module}.weight"].detach().float().mean().cpu()
            for name in modules[module]:
                if name.endswith(".weight"):
                    fitted[name] = torch.full((basis.shape[1],), float(gain))
            continue
        if family.norm_has_bias:
            gain = (n * s_tx - s_x * s_t) / (n * s_xx - s_x**2).clamp_min(1e-12)
            bias = (s_t - gain * s_x) / n
        else:
            gain, bias = s_tx / s_xx.clamp_min(1e-12), None
        for name in modules[module]:
            fitted[name] = (bias if name.endswith(".bias") else gain).float()
    return fitted


def pca_state_dict(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    layer_choice: list[list[int]],
    texts: list[str],
    tokenizer,
    *,
    max_length: int = 128,
) -> tuple[dict[str, Tensor], dict]:
    """`slice` with the residual width rotated into the teacher's top principal directions.

    Every weight reading the residual stream becomes `W U`, every weight writing it `Uᵀ W` (biases and
    embeddings likewise), so the student's stream starts as `Uᵀh` of the teacher's, the best
    `d_s`-dimensional linear summary of it. FFN neurons and attention heads are the first ones, as in
    `slice`; normalisation layers are fitted (`_fit_norms`).
    """
    width = get_family(student.config).width_of(student.config)
    was_training = teacher.training
    teacher.eval()  # dropout off: the statistics describe the teacher the student will imitate
    try:
        basis, stats = pca_basis(teacher, tokenizer, texts, width, max_length=max_length)
        batches = list(_teacher_batches(tokenizer, texts, max_length))
        norms = _fit_norms(teacher, student, layer_choice, basis, batches)
    finally:
        teacher.train(was_training)
    state = sliced_state_dict(teacher, student, layer_choice, basis=basis, norms=norms)
    logger.info(
        "pca basis: %d directions keep %.1f%% of the residual energy",
        width,
        100 * stats["explained_variance"],
    )
    return state, {"pca": stats}
