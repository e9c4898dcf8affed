"""Retrieval metrics agree with pytrec_eval (trec_eval) to 1e-9, and MRR@k / Hit@k with
hand-written loops."""

from __future__ import annotations

import random

import numpy as np
import pytest

from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.evaluation.metrics import (
    METRICS,
    evaluate_run,
    metric_keys,
    rank_docs,
    run_from_topk,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 3, 5, 10)
TREC_NAMES = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}


def pytrec_scores(qrels, run, ks=KS):
    """pytrec_eval's per-query results, renamed to embedrag's keys."""
    cut = ",".join(str(k) for k in ks)
    measures = {f"{name}.{cut}" for name in TREC_NAMES.values()} | {"recip_rank"}
    raw = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    return {
        q: {
            **{f"{ours}@{k}": v[f"{trec}_{k}"] for ours, trec in TREC_NAMES.items() for k in ks},
            "recip_rank": v["recip_rank"],
        }
        for q, v in raw.items()
    }


def assert_matches_pytrec(qrels, run, ks=KS):
    ours = evaluate_run(qrels, run, ks)
    theirs = pytrec_scores(qrels, run, ks)
    for q, scores in ours.per_query.items():
        for key, value in theirs[q].items():
            if key != "recip_rank":
                assert scores[key] == pytest.approx(value, abs=1e-9), (q, key)
    return ours, theirs


def hand_mrr_hit(qrels, run, k):
    """MRR@k and Hit@k by plain loops over trec_eval's ranking."""
    mrr, hit = {}, {}
    for q, rels in qrels.items():
        if not any(r > 0 for r in rels.values()):
            continue
        ranked = sorted(run.get(q, {}).items(), key=lambda x: (-x[1], _desc(x[0])))
        mrr[q], hit[q] = 0.0, 0.0
        for rank, (doc, _) in enumerate(ranked[:k], start=1):
            if rels.get(doc, 0) > 0:
                mrr[q], hit[q] = 1.0 / rank, 1.0
                break
    return mrr, hit


def _desc(s):
    # Sort key that orders strings descending inside an ascending sort.
    return [-ord(c) for c in s] + [1]


def random_case(seed=0, n_queries=30, n_docs=50):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for qi in range(n_queries):
        q = f"q{qi}"
        qrels[q] = {d: rng.choice([0, 0, 1, 2]) for d in rng.sample(docs, rng.randint(1, 8))}
        # Rounded scores so that ties occur.
        run[q] = {d: round(rng.random(), 1) for d in rng.sample(docs, rng.randint(5, n_docs))}
    return qrels, run


HAND_QRELS = {
    "q1": {"a": 2, "b": 1, "c": 0, "x": 1, "z": -1},
    "q2": {"e": 1},  # retrieved nowhere
    "q3": {"b": 2, "d": 1},
}
HAND_RUN = {
    "q1": {"z": 0.95, "a": 0.9, "c": 0.8, "b": 0.7, "d": 0.6, "e": 0.5},
    "q2": {"a": 0.9, "b": 0.8, "c": 0.7},
    "q3": {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5, "e": 0.1},
}


def test_hand_made_graded_case_matches_pytrec_eval():
    ours, _ = assert_matches_pytrec(HAND_QRELS, HAND_RUN)
    q1 = ours.per_query["q1"]
    # z (relevance -1) is not relevant: a is the first hit, at rank 2.
    assert q1["mrr@10"] == 0.5 and q1["hit@1"] == 0.0 and q1["hit@3"] == 1.0
    assert q1["precision@10"] == pytest.approx(2 / 10)  # divided by k, not by 6 retrieved
    assert q1["recall@10"] == pytest.approx(2 / 3)  # x is never retrieved


def test_query_without_relevant_retrieved_scores_zero():
    ours, _ = assert_matches_pytrec(HAND_QRELS, HAND_RUN)
    assert set(ours.per_query["q2"].values()) == {0.0}


def test_ties_broken_by_doc_id_descending_like_trec_eval():
    # q3's four 0.5 scores rank d, c, b, a; "9" ranks above "10" (string comparison).
    assert rank_docs(HAND_RUN["q3"]) == ["d", "c", "b", "a", "e"]
    assert rank_docs({"10": 1.0, "9": 1.0, "2": 0.5}) == ["9", "10", "2"]
    assert rank_docs(HAND_RUN["q3"], 2) == ["d", "c"]
    ours, _ = assert_matches_pytrec(HAND_QRELS, HAND_RUN)
    assert ours.per_query["q3"]["mrr@1"] == 1.0  # d is relevant and ranks first
    qrels = {"q": {"9": 1}}
    ours, theirs = assert_matches_pytrec(qrels, {"q": {"10": 1.0, "9": 1.0}})
    assert ours.per_query["q"]["ndcg@1"] == theirs["q"]["ndcg@1"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_random_graded_case_matches_pytrec_eval_and_loops(seed):
    qrels, run = random_case(seed)
    ours, theirs = assert_matches_pytrec(qrels, run)
    for k in KS:
        mrr, hit = hand_mrr_hit(qrels, run, k)
        for q, scores in ours.per_query.items():
            assert scores[f"mrr@{k}"] == mrr[q]
            assert scores[f"hit@{k}"] == hit[q]
    for key in metric_keys(KS):
        expected = np.mean([s[key] for s in ours.per_query.values()])
        assert ours.mean[key] == pytest.approx(expected, abs=1e-12)


def test_mrr_at_run_length_equals_recip_rank():
    qrels, run = random_case(2, n_docs=20)
    depth = max(len(docs) for docs in run.values())
    ours, theirs = assert_matches_pytrec(qrels, run, ks=(depth,))
    for q, scores in ours.per_query.items():
        assert scores[f"mrr@{depth}"] == pytest.approx(theirs[q]["recip_rank"], abs=1e-9)


def test_query_missing_from_run_scores_zero_and_counts_in_mean():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0, "b": 0.5}}
    ours = evaluate_run(qrels, run, ks=(1,))
    # pytrec_eval leaves a query without results out of its output entirely ...
    assert set(pytrec_scores(qrels, run, ks=(1,))) == {"q1"}
    # ... embedrag scores it 0, so a model does not gain by returning nothing.
    assert ours.missing_from_run == ("q2",)
    assert set(ours.per_query["q2"].values()) == {0.0}
    assert ours.mean["ndcg@1"] == 0.5 and ours.mean["hit@1"] == 0.5


def test_queries_without_relevant_docs_are_skipped_and_run_extras_ignored():
    qrels = {"q1": {"a": 1}, "q0": {"a": 0, "b": -1}}
    run = {"q1": {"a": 1.0}, "q0": {"a": 1.0}, "other": {"a": 1.0}}
    ours = evaluate_run(qrels, run, ks=(1,))
    assert ours.without_relevant == ("q0",) and set(ours.per_query) == {"q1"}
    assert ours.mean["ndcg@1"] == 1.0
    with pytest.raises(DataError, match="no query has a relevant"):
        evaluate_run({"q0": {"a": 0}}, run, ks=(1,))


def test_metrics_in_unit_interval_and_perfect_ranking_is_one():
    qrels, run = random_case(3)
    ours = evaluate_run(qrels, run, ks=(1, 5, 50))
    for scores in ours.per_query.values():
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    perfect = {q: {d: float(r) for d, r in rels.items()} for q, rels in qrels.items()}
    best = evaluate_run(qrels, perfect, ks=(1, 5, 50))
    for key in ("ndcg@1", "ndcg@5", "ndcg@50", "map@50", "recall@50", "mrr@1", "hit@1"):
        assert best.mean[key] == pytest.approx(1.0)


def test_run_order_does_not_matter():
    qrels, run = random_case(4)
    rng = random.Random(0)
    shuffled = {}
    for q in reversed(list(run)):
        items = list(run[q].items())
        rng.shuffle(items)
        shuffled[q] = dict(items)
    assert evaluate_run(qrels, shuffled).to_dict() == evaluate_run(qrels, run).to_dict()


def test_result_layout_and_to_dict():
    ours = evaluate_run(HAND_QRELS, HAND_RUN, ks=[10, 1, 10])
    assert ours.ks == (1, 10) and ours.n_queries == 3
    assert list(ours.mean) == [f"{m}@{k}" for m in METRICS for k in (1, 10)]
    d = ours.to_dict()
    assert d["n_queries"] == 3 and d["mean"]["ndcg@10"] == ours.mean["ndcg@10"]
    assert d["per_query"]["q1"] == ours.per_query["q1"]


@pytest.mark.parametrize("ks", [(), (0,), (-1, 5), (2.5,), ("10",), (True,), None])
def test_bad_k_values_raise_config_error(ks):
    with pytest.raises(ConfigError, match="k value"):
        evaluate_run(HAND_QRELS, HAND_RUN, ks=ks)


def test_run_from_topk():
    indices = np.array([[2, 0, -1], [1, 1, 0]])
    scores = np.array([[0.9, 0.5, 0.0], [0.8, 0.7, 0.1]], dtype=np.float32)
    run = run_from_topk(["q1", "q2"], ["a", "b", "c"], indices, scores)
    assert run == {
        "q1": {"c": pytest.approx(0.9), "a": 0.5},
        "q2": {"b": pytest.approx(0.8), "a": pytest.approx(0.1)},
    }
    assert all(type(v) is float for row in run.values() for v in row.values())
    with pytest.raises(ConfigError, match="out of range"):
        run_from_topk(["q1"], ["a"], np.array([[3]]), np.array([[1.0]]))
    with pytest.raises(ConfigError, match="query ids"):
        run_from_topk(["q1", "q2"], ["a"], np.array([[0]]), np.array([[1.0]]))
    with pytest.raises(ConfigError, match="one shape"):
        run_from_topk(["q1"], ["a"], np.array([[0]]), np.array([1.0]))
