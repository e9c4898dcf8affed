"""Paired significance tests of ``eval`` and its BM25 baseline row, against references."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import ttest_rel
from typer.testing import CliRunner

from embedrag.cli import app
from embedrag.engine.data.testsets import TestSet, load_jsonl_testset
from embedrag.engine.evaluation.evaluate import ModelSpec, evaluate
from embedrag.engine.evaluation.significance import compare, permutation_pvalue, ttest_pvalue
from embedrag.engine.retrieval.lexical import analyze

runner = CliRunner()

# Fixed per-query scores (nDCG-like values in [0, 1]) of a baseline and a model.
BASE = np.array([0.20, 0.50, 0.63, 1.00, 0.00, 0.43, 0.39, 0.75, 0.50, 0.10, 0.31, 0.90])
MODEL = np.array([0.35, 0.50, 0.71, 1.00, 0.39, 0.39, 0.63, 0.91, 0.45, 0.33, 0.31, 0.95])


def reference_exact_permutation_p(a, b) -> float:
    """Every one of the 2^n sign assignments of the paired differences, written out."""
    diff = np.asarray(b) - np.asarray(a)
    observed = abs(diff.mean())
    extreme = sum(abs((diff * np.array(signs)).mean()) >= observed - 1e-12
                  for signs in itertools.product((1, -1), repeat=len(diff)))
    return extreme / 2 ** len(diff)


def test_ttest_equals_scipy_ttest_rel():
    assert ttest_pvalue(BASE, MODEL) == pytest.approx(ttest_rel(MODEL, BASE).pvalue, rel=1e-12)
    rng = np.random.default_rng(3)
    a, b = rng.random(300), rng.random(300)
    assert ttest_pvalue(a, b) == pytest.approx(ttest_rel(b, a).pvalue, rel=1e-12)


def test_permutation_equals_exact_enumeration():
    # 12 queries: 4,096 assignments, fewer than the resamples, so the test enumerates them all
    p = permutation_pvalue(BASE, MODEL)
    assert p == pytest.approx(reference_exact_permutation_p(BASE, MODEL), abs=1e-12)
    assert 0.001 < p < 0.1  # a consistent gain on most queries
    shuffled = permutation_pvalue(BASE, np.roll(MODEL, 5))
    assert shuffled == pytest.approx(reference_exact_permutation_p(BASE, np.roll(MODEL, 5)), abs=1e-12)


def test_randomized_permutation_is_seeded_and_agrees_with_the_t_test_on_many_queries():
    rng = np.random.default_rng(7)
    a = rng.random(400)
    b = np.clip(a + rng.normal(0.02, 0.2, 400), 0, 1)
    first, again = permutation_pvalue(a, b, seed=1), permutation_pvalue(a, b, seed=1)
    assert first == again
    # with 400 roughly normal differences both tests tell the same story
    assert first == pytest.approx(ttest_pvalue(a, b), abs=0.03)


def test_identical_scores_and_counts():
    assert permutation_pvalue(BASE, BASE) == 1.0 and ttest_pvalue(BASE, BASE) == 1.0
    result = compare("ndcg@10", {f"q{i}": {"ndcg@10": v} for i, v in enumerate(BASE)},
                     {f"q{i}": {"ndcg@10": v} for i, v in enumerate(MODEL)})
    diff = MODEL - BASE
    assert (result.wins, result.ties, result.losses) == ((diff > 0).sum(), (diff == 0).sum(), (diff < 0).sum())
    assert result.queries == 12 and result.gain == pytest.approx(diff.mean())
    assert result.p_ttest == pytest.approx(ttest_rel(MODEL, BASE).pvalue)


CORPUS = {
    "d1": "The cat sat on the mat with another cat.",
    "d2": "Dogs and cats are common household pets.",
    "d3": "Stock markets fell sharply as investors sold shares.",
    "d4": "A mat is a flat piece of material on the floor.",
    "d5": "Investors buy shares when markets are rising.",
    "d6": "Running dogs chase cats in the park.",
    "d7": "台北的牛肉麵很好吃",
    "d8": "牛肉和麵是台灣的小吃",
}
QUERIES = {"q1": "cats on mats", "q2": "investors selling shares in falling markets",
           "q3": "dogs running", "q4": "台北牛肉麵"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}, "q3": {"d6": 1}, "q4": {"d7": 1}}


def reference_lucene_bm25(query: list[str], docs: dict[str, list[str]], k1=1.2, b=0.75) -> dict[str, float]:
    """Lucene's BM25, term by term, as its BM25Similarity documentation writes it (since
    Lucene 8 without the constant (k1 + 1) factor of the numerator, which ranks the same)."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs.values()) / n
    scores = {}
    for doc_id, terms in docs.items():
        tf = Counter(terms)
        total = 0.0
        for term in query:
            df = sum(term in d for d in docs.values())
            if not tf[term]:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            total += idf * tf[term] / (tf[term] + k1 * (1 - b + b * len(terms) / avgdl))
        scores[doc_id] = total
    return scores


def test_bm25_row_ranks_as_the_reference_bm25():
    from embedrag.engine.evaluation.metrics import evaluate_run
    from embedrag.engine.retrieval.lexical import BM25Ranker

    assert analyze("Running dogs") == ["run", "dog"] and analyze("台北") == ["台", "北"]
    docs = {d: analyze(t) for d, t in CORPUS.items()}
    ranker = BM25Ranker(list(CORPUS.values()))
    reference_run = {}
    for qid, query in QUERIES.items():
        reference = reference_lucene_bm25(analyze(query), docs)
        assert dict(zip(CORPUS, ranker.scores(query))) == pytest.approx(reference, rel=1e-5, abs=1e-6)
        # passages sharing no term with the query are not retrieved
        reference_run[qid] = {d: s for d, s in reference.items() if s > 0}
    test_set = TestSet(name="toy", source="toy", queries=QUERIES, corpus=CORPUS, qrels=QRELS)
    result = evaluate(test_set, ["bm25"], ks=(1, 3, 8), use_cache=False).models[0]
    expected = evaluate_run(QRELS, reference_run, ks=(1, 3, 8))
    assert result.model == "bm25"
    assert result.per_query.keys() == expected.per_query.keys()
    for qid, scores in expected.per_query.items():
        assert result.per_query[qid] == pytest.approx(scores)
    assert result.metrics["mrr@8"] < 1  # not every query's judged passage ranks first: a real ranking


def test_report_table_and_chart_carry_significance(tiny_bert, tmp_path):
    from test_train import _toy_rows

    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _toy_rows(3)[:10]) + "\n")
    test_set = load_jsonl_testset(path)
    report = evaluate(test_set, ["bm25", ModelSpec("bert", str(tiny_bert))], ks=(1, 10), use_cache=False)
    bm25, bert = report.models
    comparison = report.comparison(bert, "ndcg@10")
    a = [bm25.per_query[q]["ndcg@10"] for q in bm25.per_query]
    b = [bert.per_query[q]["ndcg@10"] for q in bm25.per_query]
    assert comparison.p_ttest == pytest.approx(ttest_pvalue(a, b))
    assert comparison.p_permutation == pytest.approx(permutation_pvalue(a, b))
    assert comparison.wins + comparison.ties + comparison.losses == len(a)
    data = report.to_dict()
    assert "significance_vs_baseline" not in data["models"][0]
    assert data["models"][1]["significance_vs_baseline"]["ndcg@10"]["p_permutation"] == comparison.p_permutation
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "--test-dataset", str(path), "-m", "bm25", "-m", f"bert={tiny_bert}",
                                 "--no-cache", "--k", "1,10", "--metrics", "ndcg@10,hit@1", "-o", str(out),
                                 "--plot", str(tmp_path / "chart.png")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "p (perm.)" in result.output and "wins/ties/losses" in result.output
    assert f"{comparison.wins}/{comparison.ties}/{comparison.losses}" in result.output
    saved = json.loads(out.read_text())
    assert saved["models"][0]["model"] == "bm25"
    assert set(saved["models"][1]["significance_vs_baseline"]["hit@1"]) >= {"p_permutation", "p_ttest", "wins"}
    assert (tmp_path / "chart.png").stat().st_size > 1000
