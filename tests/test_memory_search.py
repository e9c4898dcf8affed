"""A table held in memory (Retriever.keep_in_memory, used by serve) finds what LanceDB finds."""

from __future__ import annotations

import random

import pytest

from embedrag import Encoder
from embedrag.engine.data.documents import Document
from embedrag.engine.retrieval.store import Retriever, build_index

WORDS = ("tea rice bread noodle steak soup river stone cloud maple piano tiger glass ocean sugar horse "
         "light paper green train music apple market winter summer garden kitchen").split()
QUERIES = ["beef noodle soup", "tea", "a river of stone", "garden in summer", "piano music", "kitchen bread",
           "tiger", "sugar and glass", "green apple market", "ocean light paper"]


@pytest.fixture(scope="module")
def table(tiny_bert, tmp_path_factory):
    rng = random.Random(7)
    documents = [Document(id=f"d{i}", text=" ".join(rng.sample(WORDS, 6)) + f" number {i}",
                          title=f"T{i % 7}", source=f"s{i % 5}.pdf", metadata={"page": i % 9 + 1})
                 for i in range(240)]
    db = tmp_path_factory.mktemp("memory") / "db"
    build_index(documents, Encoder.load(tiny_bert, device="cpu"), db=db, chunk_size=0)
    return db


@pytest.fixture(scope="module")
def retrievers(table):
    lance = Retriever(table, "docs", device="cpu")
    memory = Retriever(table, "docs", device="cpu")
    assert memory.keep_in_memory() and len(memory.memory) == 240
    return lance, memory


def _same(a, b):
    assert [h.chunk_id for h in a] == [h.chunk_id for h in b]
    assert [h.rank for h in a] == [h.rank for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    assert [(h.text, h.title, h.source, h.metadata, h.doc_id, h.chunk) for h in a] == \
        [(h.text, h.title, h.source, h.metadata, h.doc_id, h.chunk) for h in b]


def test_memory_search_equals_lancedb_flat_search(retrievers):
    lance, memory = retrievers
    assert memory.memory is not None and lance.memory is None
    for question in QUERIES:
        _same(memory.search(question, 50), lance.search(question, 50))
        _same(memory.search(question, 1), lance.search(question, 1))


@pytest.mark.parametrize("filters", [{"doc_id": ["d3", "d40", "d77", "d200"]}, {"source": "s2.pdf"},
                                     {"source": ["s1.pdf", "s4.pdf"], "title": "T3"}, {"doc_id": "nothing"}])
def test_filters_and_hybrid_match_too(retrievers, filters):
    lance, memory = retrievers
    for question in QUERIES[:2]:
        _same(memory.search(question, 8, filters=filters), lance.search(question, 8, filters=filters))
        _same(memory.search(question, 5, hybrid=True, filters=filters),
              lance.search(question, 5, hybrid=True, filters=filters))
    if filters == {"doc_id": "nothing"}:
        assert memory.search("tea", 5, filters=filters) == []


def test_a_table_over_the_row_limit_stays_in_lancedb(table):
    retriever = Retriever(table, "docs", device="cpu")
    assert not retriever.keep_in_memory(max_rows=100) and retriever.memory is None
