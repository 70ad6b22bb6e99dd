"""Transfer-set augmentation for distillation from little task data (`--augment N`).

Each tokenised training row gets N perturbed copies. A copy carries no gold label (-100): only the
teacher supervises it, through the KD and hidden-state terms, so a student of a few hundred labelled
texts sees many more inputs of the same kind. Copies are made once, before training, with a fixed seed,
so `--cache_teacher` runs the teacher over them once like over any other row.

Perturbations act on token ids (any tokenizer, no external model), never on special tokens; each copy
gets one, chosen at random:

- `mask`: about `rate` of the tokens become the mask token (the unknown token when there is none);
- `replace`: about `rate` of the tokens become tokens drawn from the training split itself (so the
  replacements are in-domain words, in their corpus frequencies);
- `delete`: one contiguous span of about `rate` of the tokens is removed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

AUGMENT_OPS = ("mask", "replace", "delete")
UNLABELLED = -100
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")  # one entry per token


def perturb(
    row: dict,
    op: str,
    rng: random.Random,
    *,
    special: set[int],
    mask_id: int,
    pool: Sequence[int],
    rate: float = 0.15,
) -> dict:
    """A copy of a tokenised row with one perturbation applied to its non-special tokens.

    Per-token columns (`input_ids`, `attention_mask`, `token_type_ids`) stay aligned; other columns
    are copied as they are. A row with no ordinary token comes back unchanged.
    """
    ids = list(row["input_ids"])
    positions = [i for i, t in enumerate(ids) if t not in special]
    copy = {k: (list(v) if k in TOKEN_COLUMNS else v) for k, v in row.items()}
    if not positions:
        return copy
    count = max(1, round(rate * len(positions)))
    if op == "delete":
        start = rng.randrange(len(positions) - count + 1)
        dropped = set(positions[start : start + count])
        for column in TOKEN_COLUMNS:
            if column in copy:
                copy[column] = [v for i, v in enumerate(copy[column]) if i not in dropped]
        return copy
    chosen = rng.sample(positions, count)
    for i in chosen:
        if op == "mask":
            ids[i] = mask_id
        elif op == "replace":
            for _ in range(10):  # another token than the one there (the pool holds repeats)
                token = rng.choice(pool)
                if token != ids[i]:
                    break
            ids[i] = token
        else:
            raise ValueError(f"unknown augmentation {op!r}; choose from {', '.join(AUGMENT_OPS)}")
    copy["input_ids"] = ids
    return copy


def augment_dataset(
    train: Dataset,
    copies: int,
    tokenizer: PreTrainedTokenizerBase,
    *,
    rate: float = 0.15,
    ops: Sequence[str] = AUGMENT_OPS,
    seed: int = 0,
) -> Dataset:
    """`train` followed by `copies` perturbed, unlabelled copies of each of its rows.

    Args:
        train: a tokenised split with `input_ids` (and `labels`, set to -100 on the copies).
        copies: perturbed copies per row (0 returns `train` itself).
        tokenizer: supplies the special tokens and the mask (or unknown) token.
        rate: the fraction of a row's ordinary tokens that one perturbation touches.
        ops: the perturbations to draw from.
        seed: the copies depend on it alone.
    """
    from datasets import Dataset, concatenate_datasets

    if copies <= 0:
        return train
    unknown = [op for op in ops if op not in AUGMENT_OPS]
    if unknown:
        raise ValueError(f"--augment_ops: unknown {unknown}; choose from {', '.join(AUGMENT_OPS)}")
    special = set(tokenizer.all_special_ids)
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    if mask_id is None and "mask" in ops:
        raise ValueError("--augment_ops mask needs a tokenizer with a mask or unknown token; drop 'mask'")
    pool = [t for ids in train["input_ids"] for t in ids if t not in special]
    if not pool:
        raise ValueError("--augment: the training split holds no ordinary tokens to perturb")
    rng = random.Random(seed)
    rows = []
    for row in train:
        for _ in range(copies):
            copy = perturb(
                row, rng.choice(list(ops)), rng, special=special, mask_id=mask_id, pool=pool, rate=rate
            )
            if "labels" in copy:
                copy["labels"] = UNLABELLED
            rows.append(copy)
    extra = Dataset.from_list(rows, features=train.features)
    logger.info("Augmented the training split: %d rows + %d unlabelled copies", len(train), len(extra))
    return concatenate_datasets([train, extra])
