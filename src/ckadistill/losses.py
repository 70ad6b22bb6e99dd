"""Distillation losses as pure functions on tensors and masks.

No trainer, config or I/O in here: every function takes tensors (and optional masks) and returns a
0-dim tensor, so each can be tested against an independent reference. Every loss upcasts its inputs
(fp32 by default) before any product, so bf16/fp16 activations under autocast are safe.

Contents, top to bottom: token selection and pooling; CKA in its feature-space form (the training
loss) and in its Gram-matrix form (analysis and cross-checks, with RBF and unbiased variants); the
baselines used in ablations (DistilBERT cosine, TinyBERT projected MSE); losses on logits (KL to the
teacher, token-level cross-entropy), computed over chunks of positions for large vocabularies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # label of a position without a target (the Hugging Face convention)

_TINY = 1e-30  # floor for scale normalisers; far below any real activation RMS


def select_tokens(h: Tensor, mask: Tensor | None = None, *, name: str = "h") -> Tensor:
    """Stack the real tokens of a batch as rows.

    Args:
        h: `(B, T, d)` hidden states, or `(n, d)` rows already selected.
        mask: `(B, T)` for a 3-D `h` (or `(n,)` for a 2-D one); nonzero marks a real token.

    Returns:
        `(n, d)` rows in batch-major order, the same order for every tensor sharing the mask.
    """
    if h.dim() == 3:
        h = h.reshape(-1, h.shape[-1])  # (B*T, d)
        if mask is not None:
            mask = mask.reshape(-1)
    elif h.dim() != 2:
        raise ValueError(f"{name} must be (n, d) or (B, T, d), got shape {tuple(h.shape)}")
    if mask is None:
        return h
    if mask.numel() != h.shape[0]:
        raise ValueError(f"mask has {mask.numel()} entries but {name} has {h.shape[0]} token rows")
    return h[mask.reshape(-1).bool()]  # (n, d)


def mean_pool(h: Tensor, mask: Tensor | None = None, *, lengths: Tensor | None = None) -> Tensor:
    """One row per example: the mean of its real tokens.

    Args:
        h: `(B, T, d)` hidden states with a `(B, T)` mask (all tokens when None), or `(n, d)` token rows
            in batch-major order (as `select_tokens` returns them) with `lengths`.
        lengths: `(B,)` real-token count of each example, summing to n; only with 2-D `h`.

    Returns:
        `(B, d)` in `h`'s dtype.
    """
    if h.dim() == 3:
        if mask is None:
            return h.mean(dim=1)
        weights = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    if h.dim() != 2 or lengths is None:
        raise ValueError(
            f"mean_pool takes (B, T, d) with a mask, or (n, d) rows with lengths; got {tuple(h.shape)}"
        )
    lengths = lengths.to(device=h.device, dtype=torch.long)
    if int(lengths.sum()) != h.shape[0]:
        raise ValueError(f"lengths sum to {int(lengths.sum())} but there are {h.shape[0]} token rows")
    example = torch.repeat_interleave(torch.arange(lengths.numel(), device=h.device), lengths)  # (n,)
    sums = h.new_zeros(lengths.numel(), h.shape[1]).index_add_(0, example, h)  # (B, d)
    return sums / lengths.clamp_min(1).unsqueeze(-1).to(h.dtype)


def layer_pair_rows(
    student_states: Sequence[Tensor],
    teacher_states: Sequence[Tensor],
    pairs: Sequence[tuple[int, int]],
    mask: Tensor | None = None,
    *,
    sequence_level: bool = False,
) -> list[tuple[Tensor, Tensor]]:
    """The rows each hidden-state loss compares, for every `(student, teacher)` pair of one stack.

    Args:
        student_states: `hidden_states` of one stack, each `(B, T, d_s)` (index 0 = embeddings).
        teacher_states: the teacher's, each `(B, T, d_t)`, over the same tokens.
        pairs: `(student_index, teacher_index)` into those tuples.
        mask: `(B, T)`, nonzero = a position to compare (all positions when None).
        sequence_level: one mean-pooled row per example instead of one row per selected token.

    Returns:
        Per pair, `((n, d_s), (n, d_t))` rows in batch-major order, or `((B, d_s), (B, d_t))` pooled rows.
    """
    if sequence_level:
        return [(mean_pool(student_states[s], mask), mean_pool(teacher_states[t], mask)) for s, t in pairs]
    if mask is None:
        return [(select_tokens(student_states[s]), select_tokens(teacher_states[t])) for s, t in pairs]
    # The real-token positions are found once for every pair (a boolean index per tensor would search
    # the mask again each time, and on a GPU wait for the device each time).
    index = mask.reshape(-1).nonzero().squeeze(1)  # (n,)

    def rows(h: Tensor) -> Tensor:
        if h.shape[:2] != mask.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match hidden states {tuple(h.shape)}")
        return h.reshape(-1, h.shape[-1]).index_select(0, index.to(h.device))  # (n, d)

    return [(rows(student_states[s]), rows(teacher_states[t])) for s, t in pairs]


def _paired_rows(
    x: Tensor, y: Tensor, mask: Tensor | None, dtype: torch.dtype, min_rows: int = 2
) -> tuple[Tensor, Tensor]:
    """Select the real tokens of both sides, upcast them and check that the rows pair up."""
    x = select_tokens(x, mask, name="x").to(dtype)  # (n, d_s)
    y = select_tokens(y, mask, name="y").to(dtype)  # (n, d_t)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same tokens: got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < min_rows:
        raise ValueError(f"CKA needs at least {min_rows} real tokens, got {x.shape[0]}")
    return x, y


def _centre_and_scale(h: Tensor) -> Tensor:
    """Subtract the column means, then divide by the detached RMS of the result.

    CKA is invariant to isotropic scaling, so the division changes neither the value nor the gradient;
    it keeps the fourth-power terms of CKA far from fp32 overflow for large activations or many tokens.
    """
    h = h - h.mean(dim=0, keepdim=True)  # (n, d)
    return h / h.detach().pow(2).mean().sqrt().clamp_min(_TINY)


def linear_cka(
    x: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
    *,
    eps: float = 1e-12,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Linear Centered Kernel Alignment (Kornblith et al., 2019) in its feature-space form.

        CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F),  X, Y column-centred.

    Args:
        x: student states, `(n, d_s)` or `(B, T, d_s)`.
        y: teacher states, `(n, d_t)` or `(B, T, d_t)`; `d_t` may differ from `d_s`.
        mask: `(B, T)` (or `(n,)`), nonzero = real token; padding is dropped before centring.
        eps: floor of the denominator, so all-constant inputs give 0 with a finite gradient.
        dtype: computation dtype; fp32 by default whatever the input (the covariance products
            overflow fp16 and lose too much in bf16), fp64 on request.

    Returns:
        0-dim tensor in [0, 1]. Costs O(n·(d_s² + d_t² + d_s·d_t)) and never builds an n × n matrix.

    Raises:
        ValueError: fewer than 2 real tokens, or x and y select different numbers of tokens.
    """
    x, y = _paired_rows(x, y, mask, dtype)
    with torch.autocast(x.device.type, enabled=False):  # the products stay in `dtype` under autocast
        return _FeatureCKA.apply(_centre_and_scale(x), _centre_and_scale(y), eps).clamp(0.0, 1.0)


class _FeatureCKA(torch.autograd.Function):
    """`||YᵀX||² / (||XᵀX|| · ||YᵀY||)` of centred rows, with its gradient written out.

    Autograd through the three products would keep them all for the backward and differentiate
    `XᵀX` twice (once per operand); the closed form needs one `(n, d)` product per side that has a
    gradient, and nothing on the teacher's side when it has none (the usual case):

        ∂c/∂X = 2·(Y A − c·(‖YᵀY‖/‖XᵀX‖)·X XᵀX) / (‖XᵀX‖·‖YᵀY‖),   A = YᵀX   (and symmetrically for Y).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, eps: float) -> Tensor:
        cross = y.T @ x  # (d_t, d_s)
        gram_x, gram_y = x.T @ x, y.T @ y  # (d_s, d_s), (d_t, d_t)
        norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
        numerator, denominator = cross.pow(2).sum(), norm_x * norm_y
        ctx.save_for_backward(x, y, cross, gram_x, gram_y, numerator, norm_x, norm_y)
        ctx.eps = eps
        return numerator / denominator.clamp_min(eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, cross, gram_x, gram_y, numerator, norm_x, norm_y = ctx.saved_tensors
        denominator = norm_x * norm_y
        # Below eps the denominator is a constant (clamp_min), so only the numerator has a gradient.
        live = (denominator >= ctx.eps).to(x.dtype)
        scale = 2.0 * grad / denominator.clamp_min(ctx.eps)
        shrink = live * numerator / denominator.clamp_min(ctx.eps)
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = scale * (y @ cross - shrink * (norm_y / norm_x.clamp_min(_TINY)) * (x @ gram_x))
        if ctx.needs_input_grad[1]:
            grad_y = scale * (x @ cross.T - shrink * (norm_x / norm_y.clamp_min(_TINY)) * (y @ gram_y))
        return grad_x, grad_y, None


def cka_loss(x: Tensor, y: Tensor, mask: Tensor | None = None, *, sqrt: bool = False, **kwargs) -> Tensor:
    """`1 - CKA(x, y)` (default) or the authors' `1 - sqrt(CKA)` with `sqrt=True`.

    The plain form is the default: its gradient stays bounded as CKA -> 0 (the square root's gradient
    grows without bound there, which destabilises randomly initialised students), and both forms share
    the same optimum. Shapes and keyword arguments as in `linear_cka`.
    """
    cka = linear_cka(x, y, mask, **kwargs)
    if sqrt:
        return 1.0 - cka.clamp_min(1e-12).sqrt()
    return 1.0 - cka


# ---------------------------------------------------------------------------------------------------
# Gram-matrix form: n × n kernels, for analysis and cross-checks (O(n²) memory; not a training loss).
# ---------------------------------------------------------------------------------------------------

GRAM_KERNELS = ("linear", "rbf")


def _rbf_gram(h: Tensor, sigma: float) -> Tensor:
    """RBF Gram matrix `exp(-||h_i - h_j||² / (2 σ²))` with `σ = sigma · median_{i≠j} ||h_i - h_j||`."""
    n = h.shape[0]
    sq_norms = h.pow(2).sum(dim=1)  # (n,)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (h @ h.T)).clamp_min(0.0)  # (n, n)
    eye = torch.eye(n, dtype=torch.bool, device=h.device)
    sq_dist = sq_dist.masked_fill(eye, 0.0)  # exact zeros on the diagonal, whatever the rounding
    # Median over the off-diagonal entries (each pair counted twice, which leaves the median unchanged):
    # push the n diagonal entries below every distance, then average the two middle order statistics.
    flat = sq_dist.detach().masked_fill(eye, -1.0).reshape(-1)  # (n²,)
    n_pairs = n * (n - 1)  # always even
    lo = torch.kthvalue(flat, n + n_pairs // 2).indices
    hi = torch.kthvalue(flat, n + n_pairs // 2 + 1).indices
    picked = sq_dist.reshape(-1)[torch.stack([lo, hi])].clamp_min(_TINY)  # (2,), keeps the gradient
    bandwidth = sigma * picked.sqrt().mean()
    return torch.exp(-sq_dist / (2.0 * bandwidth.pow(2)))  # (n, n)


def _double_centre(k: Tensor) -> Tensor:
    """`H K H` with `H = I - 11ᵀ/n`, written with row, column and grand means."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _u_centre(k: Tensor) -> Tensor:
    """U-centring (Székely & Rizzo, 2014): zero diagonal, then row/column sums over n-2, total over (n-1)(n-2).

    For U-centred `K_u`, `L_u`: `<K_u, L_u>_F = n (n - 3) · HSIC_u(K, L)`, the unbiased HSIC estimator of
    Song et al. (2012); the norms `||K_u||_F` are therefore real and the ratio is a correlation.
    """
    n = k.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k = k.masked_fill(eye, 0.0)  # (n, n)
    rows = k.sum(dim=1, keepdim=True) / (n - 2)  # (n, 1)
    cols = k.sum(dim=0, keepdim=True) / (n - 2)  # (1, n)
    total = k.sum() / ((n - 1) * (n - 2))
    return (k - rows - cols + total).masked_fill(eye, 0.0)


def gram_cka(
    x: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
    *,
    kernel: str = "linear",
    sigma: float | None = None,
    unbiased: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """CKA in its Gram-matrix form: `<K_c, L_c>_F / (||K_c||_F ||L_c||_F)` (Kornblith et al., 2019).

    `K` and `L` are `n × n` kernels over the real tokens of `x` and `y`, double-centred (`H K H`). With
    `kernel="linear"` (`K = X Xᵀ`) and `unbiased=False` this equals `linear_cka`; it costs O(n²·d) time
    and several n × n matrices of memory, so it is for analysis and cross-checks, not a training loss.

    Args:
        x: student states, `(n, d_s)` or `(B, T, d_s)`.
        y: teacher states, `(n, d_t)` or `(B, T, d_t)`.
        mask: `(B, T)` (or `(n,)`), nonzero = real token.
        kernel: `"linear"` or `"rbf"`. The RBF kernel is `exp(-||h_i - h_j||² / (2 σ²))` with
            bandwidth `σ = sigma × (median distance between distinct tokens)`, computed per side.
        sigma: RBF only: the multiplier of the median distance (Kornblith et al.'s `threshold`);
            None means 1.0. Their reference code takes the median over all n² entries, zero diagonal
            included, which gives a slightly smaller bandwidth for small n; here the diagonal is left out.
        unbiased: use the unbiased HSIC estimator (Song et al., 2012) through U-centring instead of
            double centring; needs at least 4 tokens, and the value may fall slightly below 0.
        dtype: computation dtype; fp64 by default (the inputs are upcast), fp32 for speed.

    Returns:
        0-dim tensor: in [0, 1] for the biased estimator, in [-1, 1] for the unbiased one.

    Raises:
        ValueError: unknown kernel, a sigma that is not positive or is given with the linear kernel,
            too few tokens, or x and y select different numbers of tokens.
    """
    if kernel not in GRAM_KERNELS:
        raise ValueError(f"kernel must be one of {GRAM_KERNELS}, got {kernel!r}")
    if sigma is not None and kernel != "rbf":
        raise ValueError(f"sigma only applies to kernel='rbf', got sigma={sigma} with kernel={kernel!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be > 0 (a multiplier of the median distance), got {sigma}")
    x, y = _paired_rows(x, y, mask, dtype, min_rows=4 if unbiased else 2)
    # A scalar rescale leaves both kernels' CKA unchanged (the RBF bandwidth follows the median distance).
    x = _centre_and_scale(x)  # (n, d_s)
    y = _centre_and_scale(y)  # (n, d_t)
    if kernel == "linear":
        gram_x, gram_y = x @ x.T, y @ y.T  # (n, n) each
    else:
        gram_x, gram_y = _rbf_gram(x, sigma or 1.0), _rbf_gram(y, sigma or 1.0)  # (n, n) each
    centre = _u_centre if unbiased else _double_centre
    k_c = centre(gram_x)  # (n, n)
    del gram_x  # free each raw kernel as soon as it is centred
    l_c = centre(gram_y)  # (n, n)
    del gram_y
    inner = torch.dot(k_c.reshape(-1), l_c.reshape(-1))  # <K_c, L_c>_F without an n² temporary
    norms = torch.linalg.matrix_norm(k_c) * torch.linalg.matrix_norm(l_c)
    return inner / norms.clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------
# Baselines for ablations.
# ---------------------------------------------------------------------------------------------------


def _masked_mean(values: Tensor) -> Tensor:
    """Mean of a 1-D tensor that is exactly 0 (with a zero gradient) when the tensor is empty."""
    return values.sum() / max(values.numel(), 1)


def cosine_hidden_loss(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """DistilBERT's hidden-state loss (Sanh et al., 2019): mean over real tokens of `1 - cos(x_i, y_i)`.

    Args:
        x: student states, `(n, d)` or `(B, T, d)`.
        y: teacher states of the same width `d`.
        mask: `(B, T)` (or `(n,)`), nonzero = real token.

    Returns:
        0-dim fp32 tensor in [0, 2] (inputs are upcast to fp32); 0 when no token is real.

    Raises:
        ValueError: the widths differ; cosine needs equal widths (use hidden loss `cka`, or `mse_proj`
            with a learned projection, for a narrower student).
    """
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"cosine hidden loss needs equal widths, got student {x.shape[-1]} and teacher {y.shape[-1]}; "
            "use hidden loss 'cka' (any widths) or 'mse_proj' (learned projection) instead"
        )
    xs = select_tokens(x, mask, name="x").float()  # (n, d)
    ys = select_tokens(y, mask, name="y").float()  # (n, d)
    return _masked_mean(1.0 - F.cosine_similarity(xs, ys, dim=-1, eps=1e-8))


class HiddenProjection(nn.Module):
    """TinyBERT's learned map from student to teacher width: a `Linear(d_student, d_teacher)`.

    It belongs to the training code (optimised alongside the student, discarded afterwards) and is never
    a submodule of the student, so saved students carry no extra weights.
    """

    def __init__(self, d_student: int, d_teacher: int, *, bias: bool = True):
        super().__init__()
        if d_student < 1 or d_teacher < 1:
            raise ValueError(f"widths must be >= 1, got d_student={d_student}, d_teacher={d_teacher}")
        self.linear = nn.Linear(d_student, d_teacher, bias=bias)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, h: Tensor) -> Tensor:
        """`(..., d_student)` -> `(..., d_teacher)`, computed in the projection's parameter dtype."""
        if h.shape[-1] != self.in_features:
            raise ValueError(
                f"HiddenProjection expects width {self.in_features}, got {h.shape[-1]}; build it with "
                "d_student equal to the student's hidden size"
            )
        return self.linear(h.to(self.linear.weight.dtype))


def projected_mse_loss(x: Tensor, y: Tensor, projection: nn.Module, mask: Tensor | None = None) -> Tensor:
    """TinyBERT's hidden-state loss (Jiao et al., 2020): `mean((x W + b - y)²)` over real tokens and features.

    Args:
        x: student states, `(n, d_s)` or `(B, T, d_s)`.
        y: teacher states, `(n, d_t)` or `(B, T, d_t)`.
        projection: maps `(n, d_s)` to `(n, d_t)`, usually a `HiddenProjection` kept in fp32.
        mask: `(B, T)` (or `(n,)`), nonzero = real token.

    Returns:
        0-dim fp32 tensor (projected states and targets are upcast to fp32); 0 when no token is real.
    """
    xs = select_tokens(x, mask, name="x")  # (n, d_s)
    ys = select_tokens(y, mask, name="y").float()  # (n, d_t)
    pred = projection(xs).float()  # (n, d_t)
    if pred.shape != ys.shape:
        raise ValueError(
            f"projection output {tuple(pred.shape)} does not match the teacher rows {tuple(ys.shape)}; "
            "build the projection with d_teacher equal to the teacher's hidden size"
        )
    return _masked_mean((pred - ys).pow(2).reshape(-1))


# ---------------------------------------------------------------------------------------------------
# Losses on logits. Token-level terms run over chunks of positions: the fp32 log-softmax of a
# (positions, vocabulary) block is then alive for one chunk at a time (mBART: 250k entries per position).
# ---------------------------------------------------------------------------------------------------


def _gather_and_apply(fn: Callable[..., Tensor], index: Tensor, *rows: Tensor) -> Tensor:
    return fn(*(r.index_select(0, index) for r in rows))


def chunked_position_sum(
    fn: Callable[..., Tensor],
    rows: Sequence[Tensor],
    keep: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, int]:
    """`Σ fn(rows at the kept positions)`, taken `chunk_size` positions at a time.

    Args:
        fn: maps the selected rows, `(m, ...)` each, to a 0-dim sum over those m positions.
        rows: tensors whose first axis is the P positions, e.g. `(P, V)` logits and `(P,)` labels.
        keep: `(P,)`, nonzero = a position that counts (all when None).
        chunk_size: positions per call of `fn`; None = all in one call. With a chunk size, each call
            runs under `torch.utils.checkpoint` when gradients are needed, so the backward keeps only
            the inputs and recomputes one chunk's intermediates at a time (about one extra forward of `fn`).

    Returns:
        The sum, and the number of kept positions. With none kept the sum is exactly 0 with a zero
        gradient, and values at dropped positions (even non-finite ones) never enter it.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 position (or None for one chunk), got {chunk_size}")
    first = rows[0]
    if keep is None:
        index = torch.arange(first.shape[0], device=first.device)  # (P,)
    else:
        index = keep.reshape(-1).nonzero().squeeze(1)  # (n,) kept positions
    if index.numel() == 0:
        return first[:0].float().sum(), 0  # an empty slice: 0, and a zero gradient for every position
    if chunk_size is None or index.numel() <= chunk_size:
        # One chunk: recomputing it in the backward would cost a forward and save no memory.
        return _gather_and_apply(fn, index, *rows), index.numel()
    recompute = torch.is_grad_enabled() and any(r.requires_grad for r in rows)
    total = None
    for part in index.split(chunk_size):  # (<= chunk_size,) positions
        if recompute:
            value = checkpoint(
                _gather_and_apply, fn, part, *rows, use_reentrant=False, preserve_rng_state=False
            )
        else:
            value = _gather_and_apply(fn, part, *rows)
        total = value if total is None else total + value
    return total, index.numel()


def _kl_sum(student: Tensor, teacher: Tensor, temperature: float, reverse: bool) -> Tensor:
    """Σ over rows of KL between softened distributions; `(m, V)` logits upcast to fp32."""
    log_ps = F.log_softmax(student.float() / temperature, dim=-1)  # (m, V)
    log_pt = F.log_softmax(teacher.float() / temperature, dim=-1)  # (m, V)
    if reverse:
        return (log_ps.exp() * (log_ps - log_pt)).sum()
    return (log_pt.exp() * (log_pt - log_ps)).sum()


def kl_logits_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reverse: bool = False,
    chunk_size: int | None = None,
    teacher_vocab: Tensor | None = None,
) -> Tensor:
    """KL divergence between softened teacher and student distributions (Hinton et al., 2015), times T².

    Forward (default): `KL(p_t || p_s) = Σ_v p_t (log p_t - log p_s)`, the usual distillation term;
    reverse (`reverse=True`): `KL(p_s || p_t)`, mode-seeking (as in MiniLLM / GKD). `p = softmax(z / T)`.

    Args:
        student_logits: `(B, C)` class logits or `(B, T, V)` token logits.
        teacher_logits: same shape; the caller computes them under `no_grad`.
        mask: `(B,)` or `(B, T)`, nonzero = position to keep (e.g. `labels != -100`). Masked positions
            never enter the computation, so even non-finite logits there are harmless.
        temperature: softening temperature `T > 0`; the result is multiplied by `T²` so gradient scales
            stay comparable across temperatures.
        reverse: use `KL(p_s || p_t)` instead of `KL(p_t || p_s)`.
        chunk_size: at most this many positions at a time, each chunk checkpointed when gradients are
            needed (see `chunked_position_sum`); the value and gradient equal the unchunked ones.
        teacher_vocab: `(V_s,)` int64, for a student with a trimmed vocabulary: the teacher's column of
            each student column. The teacher's `(..., V_t)` logits are restricted to these columns before
            the softmax (one chunk at a time), so `p_t` is renormalised over the student's vocabulary:
            `p_t(v) / Σ_{u kept} p_t(u)`.

    Returns:
        0-dim fp32 tensor (logits are upcast to fp32): the mean over kept positions; exactly 0, with a
        zero gradient, when every position is masked.

    Raises:
        ValueError: shapes differ (teacher and student must share the label set / vocabulary), wrong
            rank, mask shape mismatch, temperature <= 0, or chunk_size < 1.
    """
    # With a trimmed student only the positions must agree; its columns are picked from the teacher's.
    expected = (
        teacher_logits.shape
        if teacher_vocab is None
        else (*teacher_logits.shape[:-1], student_logits.shape[-1])
    )
    if tuple(student_logits.shape) != tuple(expected):
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; teacher and student need the same label set or vocabulary (same tokenizer)"
        )
    if teacher_vocab is not None and tuple(teacher_vocab.shape) != (student_logits.shape[-1],):
        raise ValueError(
            f"teacher_vocab must hold one teacher column per student column ({student_logits.shape[-1]}), "
            f"got shape {tuple(teacher_vocab.shape)}"
        )
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, T, V), got shape {tuple(student_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mask is not None and tuple(mask.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits' positions {tuple(student_logits.shape[:-1])}"
        )
    s = student_logits.reshape(-1, student_logits.shape[-1])  # (P, V_s), P = positions
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1])  # (P, V_t)
    columns = None if teacher_vocab is None else teacher_vocab.to(t.device)

    def kl_sum(s_rows: Tensor, t_rows: Tensor) -> Tensor:
        if columns is not None:
            t_rows = t_rows.index_select(-1, columns)  # (m, V_t) -> (m, V_s)
        return _kl_sum(s_rows, t_rows, temperature, reverse)

    total, kept = chunked_position_sum(kl_sum, (s, t), mask, chunk_size)
    return total / max(kept, 1) * temperature**2


def token_cross_entropy(
    logits: Tensor, labels: Tensor, *, label_smoothing: float = 0.0, chunk_size: int | None = None
) -> Tensor:
    """Cross-entropy of token logits against target ids, over the positions that have a target.

    Args:
        logits: `(B, T, V)` (or `(P, V)`) logits of the positions that predict `labels`; a causal LM
            shifts logits and labels by one before calling this.
        labels: `(B, T)` (or `(P,)`) target ids; `-100` (`IGNORE_INDEX`) = no target, skipped.
        label_smoothing: as in `torch.nn.functional.cross_entropy`.
        chunk_size: at most this many positions at a time, as in `kl_logits_loss`.

    Returns:
        0-dim fp32 mean over target positions (logits upcast to fp32), equal to
        `F.cross_entropy(..., ignore_index=-100)`; exactly 0, with a zero gradient, when there is none.
    """
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels {tuple(labels.shape)} must match the logits' positions {tuple(logits.shape[:-1])}"
        )
    vocab = logits.shape[-1]

    def ce_sum(rows: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(rows.float(), targets, reduction="sum", label_smoothing=label_smoothing)

    flat_labels = labels.reshape(-1).long()  # (P,)
    total, kept = chunked_position_sum(
        ce_sum, (logits.reshape(-1, vocab), flat_labels), flat_labels != IGNORE_INDEX, chunk_size
    )
    return total / max(kept, 1)


# ---------------------------------------------------------------------------------------------------
# Output terms of a distillation loss: per example (classification) or per target token (LMs).
# ---------------------------------------------------------------------------------------------------


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
    keep = labels != IGNORE_INDEX  # (B,)
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


def target_mask(labels: Tensor) -> Tensor:
    """`(B, T)` bool: the decoder positions that predict a real target token (`labels != -100`).

    Position 0 (the start slot, which predicts the first target token) is kept; padding is dropped.
    CE, KL and the decoder hidden pairs all use this mask, so they see the same positions.
    """
    return labels != IGNORE_INDEX


def token_level_terms(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    task: bool = True,
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
    reverse: bool = False,
    chunk_size: int | None = None,
    teacher_vocab: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cross-entropy on the labels and KL to the teacher over the target positions of a batch.

    Args:
        student_logits: `(B, T, V)` logits of the positions that predict `labels` (a decoder-only LM
            passes `logits[:, :-1]` with `labels[:, 1:]`).
        teacher_logits: `(B, T, V)` from the teacher under `no_grad`, or None to leave KD out; `(B, T, V_t)`
            with `teacher_vocab`.
        labels: `(B, T)` target ids; -100 = no target (padding).
        task: compute the cross-entropy term.
        label_smoothing, temperature, reverse: as in `token_cross_entropy` and `kl_logits_loss`.
        chunk_size: positions per chunk of both terms, so fp32 copies of `(B·T, V)` never all coexist.
        teacher_vocab: `(V,)` teacher column of each student column (a trimmed student), as in
            `kl_logits_loss`; `labels` are student ids.

    Returns:
        `{"task": CE, "kd": KL}` (each only when asked for), fp32 0-dim means over the target positions;
        0 with a zero gradient when no position has a target.
    """
    terms = {}
    if task:
        terms["task"] = token_cross_entropy(
            student_logits, labels, label_smoothing=label_smoothing, chunk_size=chunk_size
        )
    if teacher_logits is not None:
        terms["kd"] = kl_logits_loss(
            student_logits,
            teacher_logits.to(student_logits.device),
            target_mask(labels),
            temperature=temperature,
            reverse=reverse,
            chunk_size=chunk_size,
            teacher_vocab=teacher_vocab,
        )
    return terms
