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

An `EncoderDecoderModel` teacher (bert2bert) gives an `EncoderDecoderModel` student whose encoder and
decoder sub-configs shrink together and keep one width (`Family.tied_width`); its top-level config
(`decoder_start_token_id`, `pad_token_id`, and `eos_token_id` / `vocab_size` when the teacher sets them)
is carried over, so the student generates like the teacher.

Tensor cutting lives in `ckadistill.slicing`, which `pca_init` also uses: imports run one way,
`students` -> `pca_init` -> `slicing` -> `families`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ckadistill.families import Family, get_family, read_field, write_field
from ckadistill.layer_maps import evenly_spaced
from ckadistill.pca_init import pca_state_dict
from ckadistill.slicing import sliced_state_dict

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
    d_t = family.width_of(teacher_config)  # checks that bert2bert's encoder and decoder widths agree
    d_s = d_t if hidden_size is None else hidden_size
    if d_s < 1:
        raise ValueError(f"--hidden-size must be at least 1, got {d_s}")
    for field in (family.width, *family.tied_width):
        write_field(config, field, d_s)

    depths = _resolve_depths(family, num_layers, encoder_layers, decoder_layers)
    for field, depth in zip(family.layers, depths, strict=True):
        if depth is not None:
            write_field(config, field, depth)

    for stack in range(len(family.layers)):
        field = family.ffn_field(stack)
        if ffn_size is not None:
            if ffn_size < 1:
                raise ValueError(f"--ffn-size must be at least 1, got {ffn_size}")
            write_field(config, field, ffn_size)
        else:
            write_field(config, field, max(1, round(int(read_field(teacher_config, field)) * d_s / d_t)))

    for stack in range(len(family.layers)):
        field = family.heads_field(stack)
        h_t = family.num_heads(teacher_config, stack)
        if num_heads is not None:
            heads = num_heads
        elif (h_t * d_s) % d_t == 0:
            heads = h_t * d_s // d_t  # keeps the teacher's head dimension
        else:
            hd_t = family.head_size(teacher_config, stack)
            raise ValueError(
                f"--hidden-size {d_s} is not a multiple of the teacher's head dimension {hd_t} "
                f"({h_t} heads x {hd_t} = {d_t}); pass --heads explicitly"
            )
        if heads < 1:
            raise ValueError(f"--heads must be at least 1, got {heads}")
        if family.head_dim is None and d_s % heads != 0:
            raise ValueError(f"--heads {heads} must divide the width --hidden-size {d_s}")
        write_field(config, field, heads)
    return config


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
        t, s = int(read_field(teacher_config, field)), int(read_field(config, field))
        if s > t:
            raise ValueError(
                f"--init {init} cuts the student out of the teacher, but {flag} asks {field}={s} "
                f"> the teacher's {t}; shrink it or use --init random"
            )
    for stack in range(len(family.layers)):
        hd_s, hd_t = family.head_size(config, stack), family.head_size(teacher_config, stack)
        if hd_s > hd_t:
            raise ValueError(
                f"--init {init}: --heads gives a head dimension {hd_s} larger than the teacher's {hd_t}; "
                "use more heads"
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
        teacher: any model of a family in `ckadistill.families.FAMILIES`, with or without a task head,
            or a bert2bert `EncoderDecoderModel`.
        hidden_size, ffn_size, num_heads: student widths (defaults in `student_config`); a bert2bert
            student's encoder and decoder both take them.
        num_layers: depth of an encoder-only student; `encoder_layers` / `decoder_layers` for
            encoder-decoders (bert2bert included). `None` keeps the teacher's depth.
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
    d_t, d_s = family.width_of(teacher.config), family.width_of(config)
    depths = [(int(read_field(teacher.config, f)), int(read_field(config, f))) for f in family.layers]
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
            "ffn": int(read_field(teacher.config, family.ffn[0])) / int(read_field(config, family.ffn[0])),
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


def student_from_args(
    teacher: PreTrainedModel, model_args, *, init_texts=None, tokenizer=None, seed: int = 0
):
    """`make_student` with the `--student_*` flags of a `DistillModelArguments`.

    For an encoder-decoder teacher `--student_layers` sets both stacks unless `--student_encoder_layers`
    / `--student_decoder_layers` say otherwise; an encoder-only teacher takes `--student_layers` (and
    `make_student` refuses the per-stack flags there, naming them).
    """
    if get_family(teacher.config).is_encoder_decoder:
        depth = model_args.student_layers
        enc, dec = model_args.student_encoder_layers, model_args.student_decoder_layers
        depths = {
            "encoder_layers": depth if enc is None else enc,
            "decoder_layers": depth if dec is None else dec,
        }
    else:
        depths = {
            "num_layers": model_args.student_layers,
            "encoder_layers": model_args.student_encoder_layers,
            "decoder_layers": model_args.student_decoder_layers,
        }
    return make_student(
        teacher,
        hidden_size=model_args.student_hidden_size,
        ffn_size=model_args.student_ffn_size,
        num_heads=model_args.student_heads,
        init=model_args.student_init,
        init_texts=init_texts,
        tokenizer=tokenizer,
        seed=seed,
        **depths,
    )


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
    init_text_column: str = "text",
    init_samples: int = 256,
    seed: int = 0,
) -> Path:
    """Load a teacher (path or hub id) and its tokenizer, build a student, save both in `output_dir`.

    `init_samples`: how many of `init_data`'s texts `pca` measures (the first ones; 0: all of them), as
    many as `distill` measures by default: the basis settles long before a large file is read through.

    Returns the output directory; the student loads back with `AutoModel…from_pretrained(output_dir)`.
    """
    from transformers import AutoTokenizer

    if init_data is not None and init != "pca":
        raise ValueError(f"--init-data is only read by --init pca, not --init {init}")
    texts = None
    if init_data is not None:
        from ckadistill.data import read_texts

        texts, _ = read_texts(
            init_data,
            init_text_column,
            max_samples=init_samples or None,
            flag="init-data",
            text_flag="init-text-column",
        )
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
