"""Distillation losses as pure functions on tensors and masks.

No trainer, config or I/O in here: every function takes tensors (and optional masks) and returns a
0-dim tensor, so each can be tested against an independent reference.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
    """
    x = select_tokens(x, mask, name="x").to(dtype)  # (n, d_s)
    y = select_tokens(y, mask, name="y").to(dtype)  # (n, d_t)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same tokens: got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 real tokens, got {x.shape[0]}")
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    # CKA is scale invariant, so dividing by a detached RMS changes neither value nor gradient; it keeps
    # the fourth-power terms below far from fp32 overflow for large activations or many tokens.
    x = x / x.detach().pow(2).mean().sqrt().clamp_min(1e-30)
    y = y / y.detach().pow(2).mean().sqrt().clamp_min(1e-30)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2  # ||Yᵀ X||_F², (d_t, d_s) product
    self_x = torch.linalg.matrix_norm(x.T @ x)  # (d_s, d_s) product
    self_y = torch.linalg.matrix_norm(y.T @ y)  # (d_t, d_t) product
    return (cross / (self_x * self_y).clamp_min(eps)).clamp(0.0, 1.0)


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
