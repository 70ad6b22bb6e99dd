"""Which student hidden state learns from which teacher hidden state.

A layer map is a list of `(student_index, teacher_index)` pairs into the models' `hidden_states`
tuples: index 0 is the embedding output, index `i` the output of layer `i` (1-based). Encoder and
decoder get separate maps. A map is written either as a keyword or as explicit text:

- `uniform` (the paper's default): embeddings meet embeddings (`0:0`) and student layer `i` meets
  teacher layer `round(k·i)`, `k = L_teacher / L_student`, so the top layer meets the top layer.
- `distilbart`: DistilBART's "layers to supervise" table for 6-, 12- and 16-layer teachers (no
  embedding pair); other depths fall back to the evenly spaced rule of `uniform`, minus `0:0`.
- `last`: only the top student layer meets the top teacher layer.
- `none`: no hidden-state matching.
- explicit text such as `"0:0,1:2,2:4,3:6"` (`STUDENT:TEACHER` pairs, comma separated).

Everything here is a pure function of strings and layer counts, so the trainer can resolve and
validate a map before any model is loaded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ckadistill.families import num_decoder_layers, num_encoder_layers

logger = logging.getLogger(__name__)

KEYWORDS = ("uniform", "distilbart", "last", "none")

_PAIR = re.compile(r"^(-?\d+):(-?\d+)$")

# DistilBART's supervision table (Shleifer & Rush, 2020; make_student.py): teacher depth -> student
# depth -> the teacher layers (0-based layer numbers) whose outputs supervise student layers 1..n.
# Read as layer numbers, teacher layer `j` is `hidden_states[j + 1]` and the m-th listed layer
# supervises the student's m-th layer output, so the top student layer meets the top teacher layer.
_DISTILBART_SUPERVISE: dict[int, dict[int, tuple[int, ...]]] = {
    6: {1: (5,), 2: (3, 5), 3: (1, 4, 5), 4: (1, 2, 4, 5)},
    12: {1: (11,), 2: (5, 11), 3: (3, 7, 11), 6: (1, 3, 5, 8, 10, 11)},
    16: {1: (15,), 4: (4, 9, 12, 15), 8: (1, 3, 5, 7, 9, 11, 13, 15)},
}


def evenly_spaced(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer `i` (1..L_s) -> teacher layer `round(i·L_t/L_s)`, halves rounded up (1-based; also
    the layers the `slice` initialisation copies).

    Integer arithmetic keeps it exact; with `L_t >= L_s` consecutive teacher indices differ by at
    least 1, so the result is strictly increasing and ends at `(L_s, L_t)`.
    """
    n_s, n_t = num_student_layers, num_teacher_layers
    return [(i, (2 * i * n_t + n_s) // (2 * n_s)) for i in range(1, n_s + 1)]


def _require_layers(keyword: str, num_student_layers: int, num_teacher_layers: int) -> None:
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ValueError(
            f"layer map {keyword!r} needs at least one layer on each side, got a student with "
            f"{num_student_layers} and a teacher with {num_teacher_layers} layers; use 'none' instead"
        )


def _require_not_deeper(keyword: str, num_student_layers: int, num_teacher_layers: int) -> None:
    if num_student_layers > num_teacher_layers:
        raise ValueError(
            f"layer map {keyword!r} needs a teacher at least as deep as the student, got a student with "
            f"{num_student_layers} and a teacher with {num_teacher_layers} layers; give explicit pairs "
            f"such as '0:0,{num_student_layers}:{num_teacher_layers}' or use 'last'"
        )


def _distilbart(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    n_s, n_t = num_student_layers, num_teacher_layers
    if n_s == n_t:
        return [(i, i) for i in range(1, n_s + 1)]
    table = _DISTILBART_SUPERVISE.get(n_t, {})
    if n_s in table:
        return [(i + 1, j + 1) for i, j in enumerate(table[n_s])]
    logger.info(
        "DistilBART's table has no entry for a %d-layer student of a %d-layer teacher; "
        "using evenly spaced teacher layers instead",
        n_s,
        n_t,
    )
    return evenly_spaced(n_s, n_t)


def _parse_pairs(spec: str) -> list[tuple[int, int]]:
    pairs = []
    for token in spec.split(","):
        match = _PAIR.match(token.replace(" ", ""))
        if match is None:
            raise ValueError(
                f"bad layer map token {token.strip()!r} in {spec!r}: expected comma-separated "
                f"STUDENT:TEACHER pairs of hidden-state indices such as '0:0,1:2,2:4', "
                f"or one of {', '.join(KEYWORDS)}"
            )
        try:
            pairs.append((int(match.group(1)), int(match.group(2))))
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise ValueError(
                f"layer map token {token.strip()[:40]!r} in {spec[:80]!r}: an index is far out of range; "
                "hidden-state indices run from 0 (embeddings) to the number of layers"
            ) from None
    return pairs


def _spec_text(spec: str) -> str:
    if not isinstance(spec, str):
        raise ValueError(
            f"a layer map is text (one of {', '.join(KEYWORDS)}, or pairs such as '0:0,1:2'), got "
            f"{type(spec).__name__} {spec!r}"
        )
    return spec.strip()


def check_layer_map_syntax(spec: str) -> None:
    """Raise ValueError unless `spec` is a keyword or well-formed explicit pairs; the index ranges need
    the layer counts, which `resolve_layer_map` checks once the models are known."""
    text = _spec_text(spec)
    if text.lower() in KEYWORDS:
        return
    if not text:
        raise ValueError(
            f"empty layer map: give STUDENT:TEACHER pairs such as '0:0,1:2' or one of {', '.join(KEYWORDS)}"
        )
    _parse_pairs(text)


def _validate_pairs(
    pairs: list[tuple[int, int]], spec: str, num_student_layers: int, num_teacher_layers: int
) -> None:
    seen: dict[int, int] = {}
    for s, t in pairs:
        if not 0 <= s <= num_student_layers:
            raise ValueError(
                f"layer map pair {s}:{t} in {spec!r}: student index {s} is out of range; valid student "
                f"indices are 0..{num_student_layers} (0 = embeddings, {num_student_layers} = top layer)"
            )
        if not 0 <= t <= num_teacher_layers:
            raise ValueError(
                f"layer map pair {s}:{t} in {spec!r}: teacher index {t} is out of range; valid teacher "
                f"indices are 0..{num_teacher_layers} (0 = embeddings, {num_teacher_layers} = top layer)"
            )
        if s in seen:
            raise ValueError(
                f"layer map {spec!r} maps student layer {s} twice ({s}:{seen[s]} and {s}:{t}); "
                f"each student hidden state learns from one teacher hidden state"
            )
        seen[s] = t


def resolve_layer_map(spec: str, num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """Resolve a layer-map keyword or explicit text into `(student_index, teacher_index)` pairs.

    Args:
        spec: `uniform`, `distilbart`, `last`, `none` (case-insensitive) or explicit pairs
            `"0:0,1:2,2:4"`.
        num_student_layers: `L_s`; student indices run over `0..L_s` (0 = embeddings).
        num_teacher_layers: `L_t`; teacher indices run over `0..L_t`.

    Returns:
        Pairs sorted by student index. A teacher index may repeat in explicit maps, a student index
        never does.

    Raises:
        ValueError: bad syntax (or not text at all), an index out of range, a student layer mapped twice, or a keyword
            that cannot apply to these depths (`uniform` / `distilbart` with a student deeper
            than the teacher, any keyword but `none` with zero layers on one side).
    """
    for name, value in (
        ("num_student_layers", num_student_layers),
        ("num_teacher_layers", num_teacher_layers),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    text = _spec_text(spec)
    keyword = text.lower()
    if keyword == "none":
        return []
    if keyword == "uniform":
        _require_layers(keyword, num_student_layers, num_teacher_layers)
        _require_not_deeper(keyword, num_student_layers, num_teacher_layers)
        return [(0, 0), *evenly_spaced(num_student_layers, num_teacher_layers)]
    if keyword == "distilbart":
        _require_layers(keyword, num_student_layers, num_teacher_layers)
        _require_not_deeper(keyword, num_student_layers, num_teacher_layers)
        return _distilbart(num_student_layers, num_teacher_layers)
    if keyword == "last":
        _require_layers(keyword, num_student_layers, num_teacher_layers)
        return [(num_student_layers, num_teacher_layers)]
    if not text:
        raise ValueError(
            f"empty layer map: give STUDENT:TEACHER pairs such as '0:0,1:2' or one of {', '.join(KEYWORDS)}"
        )
    pairs = _parse_pairs(text)
    _validate_pairs(pairs, text, num_student_layers, num_teacher_layers)
    return sorted(pairs)


def format_layer_map(pairs: list[tuple[int, int]]) -> str:
    """The compact text form, `"0:0,1:2,2:4"`; `"none"` for an empty map. Inverse of the explicit syntax."""
    if not pairs:
        return "none"
    return ",".join(f"{s}:{t}" for s, t in pairs)


@dataclass(frozen=True)
class LayerMap:
    """Resolved maps for both stacks; `decoder` is empty for encoder-only models."""

    encoder: tuple[tuple[int, int], ...]
    decoder: tuple[tuple[int, int], ...]


def layer_map_for(
    teacher_config, student_config, encoder: str = "uniform", decoder: str = "uniform"
) -> LayerMap:
    """Resolve encoder and decoder maps for a teacher/student pair from their configs.

    Layer counts come from `ckadistill.families` (ValueError for an unsupported `model_type`); a
    bert2bert `EncoderDecoderConfig` reads them from its `encoder` and `decoder` sub-configs.

    For encoder-only pairs the decoder map is empty whatever keyword `decoder` holds (so the
    `uniform` default fits every family); explicit decoder pairs are an error there.

    Raises:
        ValueError: as `resolve_layer_map`, prefixed with the stack it concerns; or when only one
            of the two models has a decoder.
    """
    t_enc, t_dec = num_encoder_layers(teacher_config), num_decoder_layers(teacher_config)
    s_enc, s_dec = num_encoder_layers(student_config), num_decoder_layers(student_config)
    try:
        encoder_pairs = resolve_layer_map(encoder, s_enc, t_enc)
    except ValueError as err:
        raise ValueError(f"encoder layer map: {err}") from err
    if (t_dec == 0) != (s_dec == 0):
        raise ValueError(
            f"the teacher has {t_dec} decoder layers and the student {s_dec}: both must be encoder-only "
            f"or both encoder-decoder (teacher {teacher_config.model_type}, student {student_config.model_type})"
        )
    if t_dec == 0:
        if _spec_text(decoder).lower() not in KEYWORDS:
            raise ValueError(
                f"decoder layer map {decoder!r} given, but {teacher_config.model_type} models have no "
                f"decoder; leave the decoder map at its default"
            )
        return LayerMap(encoder=tuple(encoder_pairs), decoder=())
    try:
        decoder_pairs = resolve_layer_map(decoder, s_dec, t_dec)
    except ValueError as err:
        raise ValueError(f"decoder layer map: {err}") from err
    return LayerMap(encoder=tuple(encoder_pairs), decoder=tuple(decoder_pairs))
