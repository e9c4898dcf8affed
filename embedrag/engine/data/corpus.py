"""Candidate passages for mining and validation: a de-duplicated corpus read from a BEIR
folder, a training JSONL file, documents or text files, and the identity of a passage
(its normalised text) that every de-duplication in embedrag uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedrag.engine.core.errors import DataError
from embedrag.engine.data.examples import Example

if TYPE_CHECKING:
    import numpy as np

    from embedrag.engine.data.testsets import TestSet

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The identity of a passage for de-duplication: case-folded, whitespace collapsed."""
    return _SPACES.sub(" ", text).strip().casefold()


@dataclass
class Corpus:
    """Candidate passages: ids and texts, de-duplicated by normalised text, and optional
    ready vectors (a LanceDB table built with the same model)."""

    ids: list[str]
    texts: list[str]
    name: str
    vectors: np.ndarray | None = None

    @classmethod
    def from_texts(cls, pairs: Sequence[tuple[str, str]], name: str) -> Corpus:
        ids, texts, seen = [], [], set()
        for doc_id, text in pairs:
            key = normalize_text(text)
            if not key or key in seen:
                continue
            seen.add(key)
            ids.append(doc_id)
            texts.append(text)
        if not texts:
            raise DataError([f"{name}: the corpus has no passages"])
        return cls(ids, texts, name)

    @property
    def fingerprint(self) -> str:
        from embedrag.engine.data.testsets import corpus_fingerprint

        return corpus_fingerprint(zip(self.ids, self.texts))  # eval's key: the two share a cache


def corpus_from_examples(examples: Sequence[Example], name: str) -> Corpus:
    """Every distinct passage of the lines (their pos and neg)."""
    pairs = []
    for example in examples:
        for text in (*example.pos, *example.neg):
            pairs.append((f"p{len(pairs) + 1}", text))
    return Corpus.from_texts(pairs, name)


def load_corpus(path: str | os.PathLike) -> Corpus:
    """A BEIR folder or its corpus.jsonl (title + text, as BEIR builds passages), a training
    JSONL file (its pooled pos/neg), a documents JSONL, or text files / a folder of them."""
    from embedrag.engine.data.documents import read_documents
    from embedrag.engine.data.examples import iter_json_objects

    path = Path(path)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        path = path / "corpus.jsonl"
    if path.is_file() and path.suffix.lower() == ".jsonl":
        first = next(iter(iter_json_objects(path)), (0, {}))[1]
        if "_id" in first and "text" in first:
            from embedrag.engine.data.testsets import read_beir_corpus

            beir = read_beir_corpus(path)  # the passages eval and --beir build: one embedding cache
            return Corpus(list(beir), list(beir.values()), str(path))
        if "query" in first and "pos" in first:
            from embedrag.engine.data.examples import load_examples

            return corpus_from_examples(load_examples(path), str(path))
    pairs = []
    for document in read_documents([path]):
        text = f"{document.title} {document.text}" if document.title and document.title not in document.text \
            else document.text
        pairs.append((document.id, text))
    return Corpus.from_texts(pairs, str(path))


def testset_over_corpus(examples: Sequence[Example], corpus: Corpus) -> TestSet:
    """The lines as queries over ``corpus``; positives missing from it are added."""
    from embedrag.engine.data.testsets import TestSet

    texts = dict(zip(corpus.ids, corpus.texts))
    id_of = {normalize_text(text): doc_id for doc_id, text in texts.items()}
    queries, qrels = {}, {}
    for number, example in enumerate(examples, start=1):
        qid = f"q{number}"
        queries[qid] = example.query
        relevant = {}
        for text in example.pos:
            key = normalize_text(text)
            if key not in id_of:
                id_of[key] = f"pos{len(texts) + 1}"
                texts[id_of[key]] = text
            relevant[id_of[key]] = 1
        qrels[qid] = relevant
    return TestSet(name=corpus.name, source=corpus.name, queries=queries, corpus=texts, qrels=qrels)
