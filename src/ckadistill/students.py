"""Build a smaller student of a teacher's family and initialise it from the teacher.

`make_student` keeps the teacher's class (a `BertForSequenceClassification` teacher gives a
`BertForSequenceClassification` student with the same labels), its vocabulary and head dimension, and
shrinks width, depth, FFN and head count as asked. Initialisations:

- `random`: the family's own initialisation, seeded.
- `slice` (Dasgupta & Cohn, 2025): student layer `i` (1-based) copies teacher layer `round(k·i)`,
  `k = L_t / L_s`; every tensor keeps its top-left block, attention keeps whole heads.
- `copy` (DistilBART): whole alternating teacher layers at equal width, first and last kept.
- `pca`: like `slice`, but the residual width keeps the teacher's top principal directions measured
  on sample text instead of its first coordinates, and every weight reading or writing the residual
  stream is rotated into that basis (see `pca_state_dict`).

Provenance (teacher, init, copied layers, layer maps, shrink factors, parameter counts) is stored as
a plain dict in `student.config.ckadistill`, which survives `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import torch
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

from ckadistill.families import A, D, Family, get_family
from ckadistill.layer_maps import evenly_spaced

logger = logging.getLogger(__name__)

INITS = ("random", "slice", "copy", "pca")

# DistilBART's layer choices for 12-layer teachers (0-based teacher layers copied). The first layer is
# always kept and, from three layers on, the last; the 2-layer row is DistilBART's own [0, 6].
_COPY_TABLE_12: dict[int, list[int]] = {
    1: [0],
    2: [0, 6],
    3: [0, 6, 11],
    4: [0, 4, 8, 11],
    6: [0, 2, 4, 7, 9, 11],
    9: [0, 1, 2, 4, 5, 7, 9, 10, 11],
    12: list(range(12)),
}


# ---------------------------------------------------------------------------------------------------
# Layer choices and maps
# ---------------------------------------------------------------------------------------------------


def slice_layers(n_teacher: int, n_student: int) -> list[int]:
    """0-based teacher layers copied by `slice`: student layer `i` (1-based) <- teacher layer `round(k·i)`.

    `k = n_teacher / n_student`; halves round up, in integers, so the choices are distinct and the top
    student layer takes the top teacher layer.
    """
    return [t - 1 for _, t in evenly_spaced(n_student, n_teacher)]


def copy_layers(n_teacher: int, n_student: int) -> list[int]:
    """0-based teacher layers copied by `copy`: DistilBART's table for 12-layer teachers, else evenly
    spaced with the first and last layer kept."""
    if n_teacher == 12 and n_student in _COPY_TABLE_12:
        return list(_COPY_TABLE_12[n_student])
    if n_student == 1:
        return [0]
    return [(2 * j * (n_teacher - 1) + n_student - 1) // (2 * (n_student - 1)) for j in range(n_student)]


def layer_map_string(teacher_layers: list[int]) -> str:
    """Hidden-state pairs `"0:0,1:t1,..."` (0 = embeddings) for 0-based copied teacher layers."""
    pairs = ["0:0"] + [f"{i + 1}:{t + 1}" for i, t in enumerate(teacher_layers)]
    return ",".join(pairs)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of `model`, tied tensors counted once, embeddings included."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Student config
# ---------------------------------------------------------------------------------------------------


def _head_dim(config: PretrainedConfig, family: Family, stack: int) -> int:
    if family.head_dim is not None:
        return int(getattr(config, family.head_dim))
    return int(getattr(config, family.width)) // int(getattr(config, family.heads_field(stack)))


def _resolve_depths(
    family: Family, num_layers: int | None, encoder_layers: int | None, decoder_layers: int | None
) -> tuple[int | None, ...]:
    """The requested depth per stack (`None` = the teacher's), with errors naming the right flags."""
    if family.is_encoder_decoder:
        if num_layers is not None:
            raise ValueError(
                f"--layers (num_layers) is for encoder-only models; {family.name} is an encoder-decoder: "
                "use --encoder-layers and --decoder-layers"
            )
        depths = (encoder_layers, decoder_layers)
    else:
        if encoder_layers is not None or decoder_layers is not None:
            raise ValueError(
                f"--encoder-layers/--decoder-layers are for encoder-decoder models; {family.name} is "
                "encoder-only: use --layers"
            )
        depths = (num_layers,)
    for flag, value in zip(("--layers/--encoder-layers", "--decoder-layers"), depths, strict=False):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    return depths


def student_config(
    teacher_config: PretrainedConfig,
    *,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    encoder_layers: int | None = None,
    decoder_layers: int | None = None,
    ffn_size: int | None = None,
    num_heads: int | None = None,
) -> PretrainedConfig:
    """A copy of the teacher's config with the student's width, depth, FFN and heads.

    Width and FFN are the teacher's unless given; with only the width given the FFN scales with it.
    Without `num_heads` the head count keeps the teacher's head dimension, which must then divide the
    new width. Labels, vocabulary, dropout and everything else stay the teacher's.
    """
    family = get_family(teacher_config)
    config = copy.deepcopy(teacher_config)
    d_t = int(getattr(teacher_config, family.width))
    d_s = d_t if hidden_size is None else hidden_size
    if d_s < 1:
        raise ValueError(f"--hidden-size must be at least 1, got {d_s}")
    setattr(config, family.width, d_s)

    depths = _resolve_depths(family, num_layers, encoder_layers, decoder_layers)
    for field, depth in zip(family.layers, depths, strict=True):
        if depth is not None:
            setattr(config, field, depth)

    for stack in range(len(family.layers)):
        field = family.ffn_field(stack)
        if ffn_size is not None:
            if ffn_size < 1:
                raise ValueError(f"--ffn-size must be at least 1, got {ffn_size}")
            setattr(config, field, ffn_size)
        else:
            setattr(config, field, max(1, round(int(getattr(teacher_config, field)) * d_s / d_t)))

    for stack in range(len(family.layers)):
        field = family.heads_field(stack)
        h_t = int(getattr(teacher_config, field))
        if num_heads is not None:
            heads = num_heads
        elif (h_t * d_s) % d_t == 0:
            heads = h_t * d_s // d_t  # keeps the teacher's head dimension
        else:
            hd_t = _head_dim(teacher_config, family, stack)
            raise ValueError(
                f"--hidden-size {d_s} is not a multiple of the teacher's head dimension {hd_t} "
                f"({h_t} heads x {hd_t} = {d_t}); pass --heads explicitly"
            )
        if heads < 1:
            raise ValueError(f"--heads must be at least 1, got {heads}")
        if family.head_dim is None and d_s % heads != 0:
            raise ValueError(f"--heads {heads} must divide the width --hidden-size {d_s}")
        setattr(config, field, heads)
    return config


# ---------------------------------------------------------------------------------------------------
# Slicing tensors
# ---------------------------------------------------------------------------------------------------


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
            (int(getattr(teacher.config, family.heads_field(s))), _head_dim(teacher.config, family, s)),
            (int(getattr(student.config, family.heads_field(s))), _head_dim(student.config, family, s)),
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


# ---------------------------------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------------------------------


def _check_fits(
    teacher_config: PretrainedConfig, config: PretrainedConfig, family: Family, init: str
) -> None:
    """`slice`, `copy` and `pca` cut blocks out of the teacher: nothing may grow."""
    flags = [(family.width, "--hidden-size")]
    flags += [(f, "--layers/--encoder-layers/--decoder-layers") for f in family.layers]
    flags += [(f, "--ffn-size") for f in family.ffn] + [(f, "--heads") for f in family.heads]
    for field, flag in flags:
        t, s = int(getattr(teacher_config, field)), int(getattr(config, field))
        if s > t:
            raise ValueError(
                f"--init {init} cuts the student out of the teacher, but {flag} asks {field}={s} "
                f"> the teacher's {t}; shrink it or use --init random"
            )
    for stack in range(len(family.layers)):
        if _head_dim(config, family, stack) > _head_dim(teacher_config, family, stack):
            raise ValueError(
                f"--init {init}: --heads gives a head dimension {_head_dim(config, family, stack)} larger "
                f"than the teacher's {_head_dim(teacher_config, family, stack)}; use more heads"
            )


def make_student(
    teacher: PreTrainedModel,
    *,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    encoder_layers: int | None = None,
    decoder_layers: int | None = None,
    ffn_size: int | None = None,
    num_heads: int | None = None,
    init: str = "slice",
    init_texts: list[str] | None = None,
    tokenizer=None,
    seed: int = 0,
) -> PreTrainedModel:
    """A student of the teacher's class, shrunk and initialised from it.

    Args:
        teacher: any model of a family in `ckadistill.families.FAMILIES`, with or without a task head.
        hidden_size, ffn_size, num_heads: student widths (defaults in `student_config`).
        num_layers: depth of an encoder-only student; `encoder_layers` / `decoder_layers` for
            encoder-decoders. `None` keeps the teacher's depth.
        init: one of `INITS`.
        init_texts, tokenizer: sample text and the teacher's tokenizer, needed by `pca` only.
        seed: seeds the random initialisation (every init starts from it).

    Returns:
        The student on the teacher's device and dtype, in eval mode, provenance in `student.config.ckadistill`.
    """
    if init not in INITS:
        raise ValueError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    family = get_family(teacher.config)
    config = student_config(
        teacher.config,
        hidden_size=hidden_size,
        num_layers=num_layers,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        ffn_size=ffn_size,
        num_heads=num_heads,
    )
    d_t, d_s = int(getattr(teacher.config, family.width)), int(getattr(config, family.width))
    depths = [(int(getattr(teacher.config, f)), int(getattr(config, f))) for f in family.layers]
    if init != "random":
        _check_fits(teacher.config, config, family, init)
    if init == "copy" and d_s != d_t:
        raise ValueError(
            f"--init copy keeps the teacher's width ({d_t}) but --hidden-size asks {d_s}; "
            "use --init slice or --init pca for a narrower student"
        )
    if init == "pca" and (not init_texts or tokenizer is None):
        raise ValueError(
            "--init pca measures the teacher on sample text: give --init-data FILE (one text per line)"
        )

    # Random initialisation first: every other init overwrites all of it (Marian's positions aside).
    config.ckadistill = None
    torch.manual_seed(seed)
    student = type(teacher)(config)
    if teacher.can_generate():
        student.generation_config = copy.deepcopy(teacher.generation_config)

    chooser = copy_layers if init == "copy" else slice_layers
    layer_choice = [chooser(n_t, n_s) for n_t, n_s in depths]
    extra: dict = {}
    if init in ("slice", "copy"):
        student.load_state_dict(sliced_state_dict(teacher, student, layer_choice), strict=True)
    elif init == "pca":
        from ckadistill.pca_init import pca_state_dict  # imports this module

        state, extra = pca_state_dict(teacher, student, layer_choice, init_texts, tokenizer)
        student.load_state_dict(state, strict=True)
    student.to(device=teacher.device, dtype=teacher.dtype).eval()  # as `from_pretrained` returns it

    n_teacher, n_student = count_parameters(teacher), count_parameters(student)
    stacks = family.stack_names()
    student.config.ckadistill = {
        "teacher": teacher.config.name_or_path or type(teacher).__name__,
        "teacher_model_type": teacher.config.model_type,
        "teacher_class": type(teacher).__name__,
        "init": init,
        "seed": seed,
        "copied_teacher_layers": None if init == "random" else dict(zip(stacks, layer_choice, strict=True)),
        "layer_map": {s: layer_map_string(c) for s, c in zip(stacks, layer_choice, strict=True)},
        "shrink": {
            "width": d_t / d_s,
            **{f"{s}_depth": n_t / n_s for s, (n_t, n_s) in zip(stacks, depths, strict=True)},
            "ffn": int(getattr(teacher.config, family.ffn[0])) / int(getattr(config, family.ffn[0])),
        },
        "teacher_parameters": n_teacher,
        "student_parameters": n_student,
        "compression": n_teacher / n_student,
        **extra,
    }
    logger.info(
        "student %s: %d -> %d parameters (%.2fx), init %s, layers %s",
        type(student).__name__,
        n_teacher,
        n_student,
        n_teacher / n_student,
        init,
        student.config.ckadistill["layer_map"],
    )
    return student


def read_texts(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one text per line."""
    texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"--init-data {path} holds no text (expected one text per line)")
    return texts


def load_teacher(teacher: str) -> PreTrainedModel:
    """Load a teacher with the class its config names (so task heads survive), else the base model."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(teacher)
    get_family(config)
    architectures = config.architectures or []
    if architectures and architectures[0] in transformers.__all__:
        model_class = getattr(transformers, architectures[0])
    else:
        model_class = transformers.AutoModel
    return model_class.from_pretrained(teacher)


def create_student(
    teacher: str,
    output_dir: str,
    *,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    encoder_layers: int | None = None,
    decoder_layers: int | None = None,
    ffn_size: int | None = None,
    num_heads: int | None = None,
    init: str = "slice",
    init_data: str | None = None,
    seed: int = 0,
) -> Path:
    """Load a teacher (path or hub id) and its tokenizer, build a student, save both in `output_dir`.

    Returns the output directory; the student loads back with `AutoModel…from_pretrained(output_dir)`.
    """
    from transformers import AutoTokenizer

    if init_data is not None and init != "pca":
        raise ValueError(f"--init-data is only read by --init pca, not --init {init}")
    texts = read_texts(init_data) if init_data is not None else None
    model = load_teacher(teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    student = make_student(
        model,
        hidden_size=hidden_size,
        num_layers=num_layers,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        ffn_size=ffn_size,
        num_heads=num_heads,
        init=init,
        init_texts=texts,
        tokenizer=tokenizer,
        seed=seed,
    )
    student.config.ckadistill["teacher"] = teacher
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
