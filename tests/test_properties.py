"""Property-based tests (hypothesis) for the JSONL reader and the retrieval metrics: what
must hold for every input, not only for the ones we thought of."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from embedrag.engine.core.errors import DataError
from embedrag.engine.data.examples import Example, Problem, iter_json_objects, load_examples, scan
from embedrag.engine.evaluation.metrics import METRICS, evaluate_run, run_from_topk
from embedrag.engine.retrieval.search import exact_search

pytrec_eval = pytest.importorskip("pytrec_eval")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KS = (1, 3, 5, 10)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One file that each generated example overwrites."""
    return tmp_path_factory.mktemp("properties") / "data.jsonl"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- the JSONL reader
texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
examples = st.builds(lambda q, p, n: {"query": q, "pos": p, "neg": n},
                     texts, st.lists(texts, min_size=1, max_size=3), st.lists(texts, max_size=3))


@SETTINGS
@given(rows=st.lists(examples, min_size=1, max_size=12), ascii_only=st.booleans(), crlf=st.booleans(),
       blank_every=st.integers(0, 4))
def test_valid_lines_read_back_exactly(scratch, rows, ascii_only, crlf, blank_every):
    newline = b"\r\n" if crlf else b"\n"
    lines, numbers = [], []
    for i, row in enumerate(rows):
        if blank_every and i % blank_every == 0:
            lines.append(b"   ")
        lines.append(json.dumps(row, ensure_ascii=ascii_only).encode("utf-8"))
        numbers.append(len(lines))
    read = load_examples(_write(scratch, newline.join(lines) + newline))
    assert [(e.query, list(e.pos), list(e.neg)) for e in read] == [(r["query"], r["pos"], r["neg"]) for r in rows]
    assert [e.line for e in read] == numbers


line_bytes = st.one_of(
    st.binary(max_size=60),
    examples.map(lambda r: json.dumps(r).encode()),
    examples.map(lambda r: json.dumps(r).encode()[: max(1, len(json.dumps(r)) // 2)]),
    st.recursive(st.none() | st.booleans() | st.integers() | texts, lambda c: st.lists(c, max_size=3)
                 | st.dictionaries(st.sampled_from(["query", "pos", "neg", "id", "x"]), c, max_size=4)
                 ).map(lambda v: json.dumps(v).encode()),
)


@SETTINGS
@given(lines=st.lists(line_bytes, max_size=10), final_newline=st.booleans())
def test_any_bytes_give_examples_or_located_problems(scratch, lines, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    path = _write(scratch, data)
    items = list(scan(path))  # never raises
    assert all(isinstance(i, (Example, Problem)) for i in items)
    for item in items:
        assert 0 <= item.line <= n_lines and item.source == str(path)
        if isinstance(item, Example):
            assert item.query.strip() and item.pos and all(isinstance(p, str) for p in (*item.pos, *item.neg))
    problems = [i for i in items if isinstance(i, Problem)]
    try:
        assert len(load_examples(path)) == len(items) and not problems
    except DataError as exc:
        assert problems and exc.problems[0] == str(problems[0])
    try:
        objects = list(iter_json_objects(path))
        assert all(isinstance(o, dict) for _, o in objects)
    except DataError as exc:
        assert str(path) in str(exc)


# ---------------------------------------------------------------- the metrics
@st.composite
def judged_runs(draw):
    """qrels with graded relevance and a run with distinct scores over a small corpus."""
    n_docs = draw(st.integers(1, 25))
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(draw(st.integers(1, 5))):
        rel = draw(st.dictionaries(st.sampled_from(docs), st.integers(0, 3), min_size=1, max_size=n_docs))
        assume(any(v > 0 for v in rel.values()))
        qrels[f"q{q}"] = rel
        retrieved = draw(st.lists(st.sampled_from(docs), unique=True, max_size=n_docs))
        # Distinct in float32 too: pytrec_eval compares scores at float32 precision.
        scores = draw(st.lists(st.integers(-1000, 1000), min_size=len(retrieved), max_size=len(retrieved),
                               unique=True))
        run[f"q{q}"] = {d: s / 1000 for d, s in zip(retrieved, scores)}
    return qrels, run


@SETTINGS
@given(judged_runs())
def test_metrics_lie_in_unit_interval_and_match_trec_eval(case):
    qrels, run = case
    scores = evaluate_run(qrels, run, KS)
    for per_query in scores.per_query.values():
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in per_query.values()), per_query
        for metric in ("recall", "hit"):  # more results never lose a relevant one
            values = [per_query[f"{metric}@{k}"] for k in KS]
            assert values == sorted(values)
    cut = ",".join(map(str, KS))
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"recall.{cut}", f"map_cut.{cut}"}
                                            ).evaluate(run)
    for q, values in theirs.items():
        for k in KS:
            assert scores.per_query[q][f"ndcg@{k}"] == pytest.approx(values[f"ndcg_cut_{k}"], abs=1e-9)
            assert scores.per_query[q][f"recall@{k}"] == pytest.approx(values[f"recall_{k}"], abs=1e-9)
            assert scores.per_query[q][f"map@{k}"] == pytest.approx(values[f"map_cut_{k}"], abs=1e-9)


@SETTINGS
@given(judged_runs())
def test_a_perfect_ranking_scores_one(case):
    qrels, _ = case
    # Relevant docs first, most relevant highest; everything else after.
    perfect = {q: {d: r + 10.0 - i * 1e-3 for i, (d, r) in enumerate(sorted(rels.items(), key=lambda x: -x[1]))}
               for q, rels in qrels.items()}
    scores = evaluate_run(qrels, perfect, KS)
    for q, per_query in scores.per_query.items():
        n_rel = sum(1 for r in qrels[q].values() if r > 0)
        for k in KS:
            assert per_query[f"ndcg@{k}"] == pytest.approx(1.0)
            assert per_query[f"mrr@{k}"] == 1.0 and per_query[f"hit@{k}"] == 1.0
            assert per_query[f"recall@{k}"] == pytest.approx(min(k, n_rel) / n_rel)


@SETTINGS
@given(judged_runs(), st.randoms(use_true_random=False))
def test_order_of_queries_and_results_never_matters(case, rnd):
    qrels, run = case

    def shuffled(mapping):
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    a = evaluate_run(qrels, run, KS)
    b = evaluate_run(shuffled({q: shuffled(r) for q, r in qrels.items()}),
                     shuffled({q: shuffled(r) for q, r in run.items()}), KS)
    assert a.per_query == b.per_query
    assert all(math.isclose(a.mean[key], b.mean[key], abs_tol=1e-12) for key in a.mean)
    assert set(a.mean) == {f"{m}@{k}" for m in METRICS for k in KS}


@SETTINGS
@given(n_queries=st.integers(1, 6), n_docs=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_corpus_order_never_changes_the_metrics(n_queries, n_docs, seed):
    """Exact search plus metrics give the same numbers whatever order the corpus is stored in."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((n_queries, 8)).astype(np.float32)
    corpus = rng.standard_normal((n_docs, 8)).astype(np.float32)
    doc_ids = [f"d{i}" for i in range(n_docs)]
    qrels = {f"q{i}": {doc_ids[j]: int(rng.integers(1, 3)) for j in rng.choice(n_docs, min(3, n_docs), False)}
             for i in range(n_queries)}
    query_ids = list(qrels)

    def metrics(order):
        found = exact_search(queries, corpus[order], 10, score="cosine")
        return evaluate_run(qrels, run_from_topk(query_ids, [doc_ids[i] for i in order], found.indices,
                                                 found.scores), KS).mean

    identity, permuted = list(range(n_docs)), random.Random(seed).sample(range(n_docs), n_docs)
    first, second = metrics(identity), metrics(permuted)
    assert all(math.isclose(first[key], second[key], abs_tol=1e-9) for key in first)
