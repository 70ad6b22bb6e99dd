"""Cut a student's tensors out of a teacher's, guided by the family table's axis roles.

Shared by the `slice` / `copy` initialisations (`ckadistill.students`) and the `pca` one
(`ckadistill.pca_init`), which passes a basis that rotates the residual axes instead of slicing them.
It imports only `ckadistill.families`, so `students` -> `pca_init` -> `slicing` -> `families` is one-way.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ckadistill.families import A, D, Family, get_family


def _narrow_heads(
    t: Tensor, axis: int, teacher_heads: tuple[int, int], student_heads: tuple[int, int]
) -> Tensor:
    """Keep the first `h_s` whole heads of an `(h_t·hd_t)` axis, and the first `hd_s` dims of each."""
    (h_t, hd_t), (h_s, hd_s) = teacher_heads, student_heads
    t = t.unflatten(axis, (h_t, hd_t))  # (..., h_t, hd_t, ...)
    t = t.narrow(axis, 0, h_s).narrow(axis + 1, 0, hd_s)  # (..., h_s, hd_s, ...)
    return t.flatten(axis, axis + 1)


def _take(
    t: Tensor,
    roles: tuple[str, ...],
    shape: torch.Size,
    heads: tuple[tuple[int, int], tuple[int, int]] | None,
    basis: Tensor | None,
) -> Tensor:
    """The student's block of teacher tensor `t`: residual axes (`D`) rotated by `basis` `(d_t, d_s)`
    when given, else sliced; attention axes (`A`) per head; every other axis its first entries."""
    for axis, role in enumerate(roles):
        if role == A and heads is not None:
            t = _narrow_heads(t, axis, *heads)
        elif role == D and basis is not None:
            t = torch.movedim(torch.tensordot(t, basis.to(t.dtype), dims=([axis], [0])), -1, axis)
        else:
            t = t.narrow(axis, 0, shape[axis])
    if t.shape != shape:
        raise ValueError(f"cannot cut a {tuple(shape)} block from a tensor of shape {tuple(t.shape)}")
    return t


def teacher_key(name: str, family: Family, layer_choice: list[list[int]], teacher_keys: set[str]) -> str:
    """The teacher parameter that student parameter `name` is cut from."""
    located = family.locate(name)
    if located is None:
        return name
    stack, layer = located
    _, pattern = family.stacks[stack]
    found = re.search(pattern, name)
    source = layer_choice[stack][layer]
    key = name[: found.start(1)] + str(source) + name[found.end(1) :]
    if key not in teacher_keys and any(re.search(p, name) for p in family.first_layer_only):
        # T5 keeps the relative attention bias in block 0 only: the student's block 0 takes it there.
        key = name[: found.start(1)] + "0" + name[found.end(1) :]
    return key


def sliced_state_dict(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    layer_choice: list[list[int]],
    *,
    basis: Tensor | None = None,
    norms: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The student's full state dict cut from the teacher.

    Args:
        layer_choice: per stack, the 0-based teacher layer copied into each student layer.
        basis: `(d_t, d_s)` orthonormal columns; residual axes are rotated into it instead of sliced.
        norms: replacement values for normalisation parameters, by student parameter name.
    """
    family = get_family(teacher.config)
    t_sd = teacher.state_dict()
    heads_per_stack = [
        (
            (family.num_heads(teacher.config, s), family.head_size(teacher.config, s)),
            (family.num_heads(student.config, s), family.head_size(student.config, s)),
        )
        for s in range(len(family.layers))
    ]
    teacher_keys = set(t_sd)
    out = {}
    for name, s_tensor in student.state_dict().items():
        if any(re.search(p, name) for p in family.fresh):
            out[name] = s_tensor
            continue
        if norms is not None and name in norms:
            out[name] = norms[name].to(s_tensor.dtype)
            continue
        roles = family.roles(name)
        located = family.locate(name)
        heads = heads_per_stack[located[0]] if located is not None else None
        key = teacher_key(name, family, layer_choice, teacher_keys)
        t = _take(t_sd[key].detach().float().cpu(), roles, s_tensor.shape, heads, basis)
        out[name] = t.to(s_tensor.dtype).clone()
    return out
