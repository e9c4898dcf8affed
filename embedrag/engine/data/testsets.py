"""Retrieval test sets: queries, a corpus, graded relevance judgements.

Two sources: the JSONL contract (query + pos, neg optional; the corpus is every distinct
passage of the file) and BEIR folders (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``, passages as ``title + " " + text`` the way BEIR and MTEB build
them, graded relevance kept).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedrag.engine.core.errors import DataError


def corpus_fingerprint(passages) -> str:
    """A hash of (id, text) pairs in order: the key of cached corpus embeddings."""
    digest = hashlib.sha256()
    for doc_id, text in passages:
        digest.update(doc_id.encode("utf-8") + b"\x00" + text.encode("utf-8") + b"\x01")
    return digest.hexdigest()


@dataclass
class TestSet:
    """Everything an evaluation needs. ``candidates`` (query id -> doc ids) are the
    line's own pos + neg for JSONL sets, for per-query ranking."""

    __test__ = False  # not a pytest class

    name: str
    source: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    candidates: dict[str, list[str]] = field(default_factory=dict)
    split: str | None = None

    @property
    def corpus_fingerprint(self) -> str:
        return corpus_fingerprint(self.corpus.items())

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.corpus_fingerprint.encode())
        for qid in sorted(self.qrels):
            digest.update(json.dumps([qid, self.queries.get(qid, ""), sorted(self.qrels[qid].items())],
                                     ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "split": self.split,
                "queries": len(self.qrels), "corpus": len(self.corpus),
                "judgements": sum(len(v) for v in self.qrels.values()),
                "fingerprint": self.fingerprint}


def load_jsonl_testset(path: str | os.PathLike) -> TestSet:
    """A test set from JSONL lines: passages pooled across lines, deduplicated by text."""
    from embedrag.engine.data.examples import load_examples

    return testset_from_examples(load_examples(path), name=Path(path).stem, source=str(path))


def testset_from_examples(examples, *, name: str, source: str) -> TestSet:
    """A test set from examples, one query per example in order (ids ``q<line>`` unless
    the example has its own); ``candidates`` are each line's own pos + neg."""
    corpus_ids: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    candidates: dict[str, list[str]] = {}
    for number, example in enumerate(examples, start=1):
        qid = example.id or f"q{number}"
        if qid in queries:
            qid = f"{qid}#{number}"
        ids = []
        for text in (*example.pos, *example.neg):
            ids.append(corpus_ids.setdefault(text, f"d{len(corpus_ids) + 1}"))
        queries[qid] = example.query
        qrels[qid] = {corpus_ids[text]: 1 for text in example.pos}
        candidates[qid] = list(dict.fromkeys(ids))
    corpus = {doc_id: text for text, doc_id in corpus_ids.items()}
    return TestSet(name=name, source=source, queries=queries, corpus=corpus, qrels=qrels,
                   candidates=candidates)


def _beir_file(folder: Path, relative: str) -> Path:
    path = folder / relative
    if not path.is_file():
        raise DataError([f"{folder}: not a BEIR folder: missing {relative}"])
    return path


def _read_jsonl_records(path: Path) -> list[tuple[int, dict]]:
    from embedrag.engine.data.examples import iter_json_objects

    records = []
    for number, record in iter_json_objects(path):
        if "_id" not in record:
            raise DataError([f"{path}:{number}: expected an object with an \"_id\""])
        records.append((number, record))
    return records


def available_splits(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))


def load_beir_testset(folder: str | os.PathLike, split: str = "test") -> TestSet:
    """A BEIR folder's split; qrels pointing at unknown ids are an error that counts them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError([f"{folder}: BEIR folder does not exist" if not folder.exists()
                         else f"{folder}: expected a BEIR folder, got a file"])
    corpus_path = _beir_file(folder, "corpus.jsonl")
    queries_path = _beir_file(folder, "queries.jsonl")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder)
        raise DataError([f"{folder}: unknown split {split!r}"
                         + (f" (available: {', '.join(splits)})" if splits else " (no qrels/*.tsv)")])
    corpus = read_beir_corpus(corpus_path)
    queries = {str(r["_id"]): str(r.get("text", "")) for _, r in _read_jsonl_records(queries_path)}
    qrels = _read_qrels(qrels_path)
    if not qrels:
        raise DataError([f"{qrels_path}: no judgements"])
    _check_ids(qrels_path, qrels, queries, corpus)
    qrels = {qid: docs for qid, docs in qrels.items()}
    return TestSet(name=folder.name, source=str(folder), split=split,
                   queries={qid: queries[qid] for qid in qrels}, corpus=corpus, qrels=qrels)


def read_beir_corpus(path: str | os.PathLike) -> dict[str, str]:
    """A BEIR corpus.jsonl as id -> passage, ``title + " " + text`` as BEIR and MTEB build it."""
    path = Path(path)
    corpus = {}
    for number, record in _read_jsonl_records(path):
        title, text = record.get("title") or "", record.get("text") or ""
        if not isinstance(title, str) or not isinstance(text, str):
            raise DataError([f"{path}:{number}: \"title\" and \"text\" must be strings"])
        corpus[str(record["_id"])] = f"{title} {text}" if title else text
    return corpus


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if number == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(row) < 3:
                raise DataError([f"{path}:{number}: expected query-id, corpus-id and score"])
            try:
                score = int(float(row[2]))
            except ValueError as exc:
                raise DataError([f"{path}:{number}: score {row[2]!r} is not a number"]) from exc
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def _check_ids(path: Path, qrels, queries, corpus) -> None:
    missing_queries = [q for q in qrels if q not in queries]
    if missing_queries:
        raise DataError([f"{path}: {len(missing_queries)} query id(s) are not in queries.jsonl "
                         f"(e.g. {missing_queries[0]!r})"])
    missing_docs = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
    if missing_docs:
        raise DataError([f"{path}: {len(missing_docs)} corpus id(s) are not in corpus.jsonl "
                         f"(e.g. {missing_docs[0]!r})"])
