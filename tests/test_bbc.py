"""The packaged BBC News corpus and its reproducible stratified splits."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from ckadistill import bbc


@pytest.fixture(scope="module")
def articles():
    return bbc.load_articles()


def test_corpus_has_five_topics_and_headlines(articles):
    assert len(articles) == 2225
    counts = Counter(row["label"] for row in articles)
    assert sorted(counts) == ["business", "entertainment", "politics", "sports", "tech"]
    first = next(row for row in articles if row["id"] == "business/001")
    assert first["text"].startswith("Ad sales boost Time Warner profit Quarterly profits")
    assert "\n" not in first["text"]


def test_split_is_stratified_disjoint_and_reproducible(articles):
    splits = bbc.stratified_split(articles, (0.7, 0.1, 0.2), seed=3)
    ids = [row["id"] for name in bbc.SPLITS for row in splits[name]]
    assert len(ids) == len(set(ids)) == len(articles)
    total = Counter(row["label"] for row in articles)
    test = Counter(row["label"] for row in splits["test"])
    for label, n in total.items():
        assert abs(test[label] - 0.2 * n) <= 1.5
    again = bbc.stratified_split(articles, (0.7, 0.1, 0.2), seed=3)
    assert [r["id"] for r in again["test"]] == [r["id"] for r in splits["test"]]
    other = bbc.stratified_split(articles, (0.7, 0.1, 0.2), seed=4)
    assert [r["id"] for r in other["test"]] != [r["id"] for r in splits["test"]]


def test_bad_fractions_are_rejected(articles):
    with pytest.raises(ValueError, match="summing to 1"):
        bbc.stratified_split(articles, (0.7, 0.2, 0.2))


def test_write_splits_round_trips_through_csv(tmp_path):
    paths = bbc.write_splits(tmp_path, seed=0)
    assert sorted(paths) == sorted(bbc.SPLITS)
    with paths["validation"].open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"id", "text", "label"}
    assert 200 < len(rows) < 250
