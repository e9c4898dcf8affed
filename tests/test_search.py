"""exact_search equals a brute-force numpy sort, whatever the block sizes and backend."""

from __future__ import annotations

import numpy as np
import pytest

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.retrieval import search
from embedrag.engine.retrieval.search import block_shape, exact_search


@pytest.fixture(params=["torch", "numpy"])
def backend(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(search, "_load_torch", lambda: None)
    else:
        pytest.importorskip("torch")
    return request.param


def brute_force(queries, corpus, k, cosine=False):
    q, c = queries.astype(np.float64), corpus.astype(np.float64)
    if cosine:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    scores = q @ c.T
    # Stable sort of negated scores: ties keep ascending corpus index.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def int_data(seed, n_q, n_c, dim=4, high=3):
    """Small integer vectors: float32 products are exact, and scores tie a lot."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-high, high + 1, (n_q, dim)).astype(np.float32),
        rng.integers(-high, high + 1, (n_c, dim)).astype(np.float32),
    )


@pytest.mark.parametrize("budget", [search.DEFAULT_MEMORY_BUDGET, 16 * 7, 1])
@pytest.mark.parametrize("k", [1, 5, 37, 100])
def test_matches_brute_force_with_ties(backend, budget, k):
    queries, corpus = int_data(k, 13, 37)
    result = exact_search(queries, corpus, k, memory_budget_bytes=budget)
    want_idx, want_scores = brute_force(queries, corpus, k)
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.float32
    assert result.indices.shape == (13, min(k, 37))
    np.testing.assert_array_equal(result.indices, want_idx)
    np.testing.assert_array_equal(result.scores, want_scores.astype(np.float32))


def test_boundary_ties_in_a_large_chunk(backend):
    # With thousands of tied scores, topk / argpartition pick arbitrary tied indices
    # (argpartition takes the highest): the result must still be the lowest ones.
    queries, corpus = int_data(11, 13, 3000)
    for budget in (search.DEFAULT_MEMORY_BUDGET, 16 * 1000):
        result = exact_search(queries, corpus, 5, memory_budget_bytes=budget)
        np.testing.assert_array_equal(result.indices, brute_force(queries, corpus, 5)[0])
    result = exact_search(np.ones((2, 2)), np.ones((5000, 2)), 4)
    np.testing.assert_array_equal(result.indices, np.tile(np.arange(4), (2, 1)))


def test_random_float_data_small_blocks(backend):
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((20, 16))
    corpus = rng.standard_normal((300, 16))
    want_idx, want_scores = brute_force(queries, corpus, 10)
    for budget in (search.DEFAULT_MEMORY_BUDGET, 16 * 50):
        result = exact_search(queries, corpus, 10, memory_budget_bytes=budget)
        np.testing.assert_array_equal(result.indices, want_idx)
        np.testing.assert_allclose(result.scores, want_scores, rtol=1e-5, atol=1e-5)


def test_cosine_normalises_and_differs_from_dot(backend):
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((6, 8)) * rng.uniform(0.1, 10, (6, 1))
    corpus = rng.standard_normal((40, 8)) * rng.uniform(0.1, 10, (40, 1))
    cos = exact_search(queries, corpus, 5, score="cosine", memory_budget_bytes=16 * 9)
    want_idx, want_scores = brute_force(queries, corpus, 5, cosine=True)
    np.testing.assert_array_equal(cos.indices, want_idx)
    np.testing.assert_allclose(cos.scores, want_scores, atol=1e-5)
    assert np.all(np.abs(cos.scores) <= 1 + 1e-5)
    dot = exact_search(queries, corpus, 5)
    np.testing.assert_array_equal(dot.indices, brute_force(queries, corpus, 5)[0])
    assert not np.array_equal(dot.indices, cos.indices)
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    same = exact_search(queries, unit, 5, score="dot")
    np.testing.assert_array_equal(
        same.indices, exact_search(queries, unit, 5, score="cosine").indices
    )


def test_all_equal_scores_pick_lowest_indices(backend):
    result = exact_search(np.ones((3, 2)), np.ones((50, 2)), 4, memory_budget_bytes=16 * 7)
    np.testing.assert_array_equal(result.indices, np.tile(np.arange(4), (3, 1)))


def test_empty_inputs_give_empty_arrays_of_the_right_shape(backend):
    r = exact_search(np.zeros((0, 4)), np.ones((7, 4)), 3)
    assert r.indices.shape == (0, 3) and r.scores.shape == (0, 3)
    r = exact_search(np.ones((2, 4)), np.zeros((0, 4)), 3)
    assert r.indices.shape == (2, 0) and r.scores.dtype == np.float32
    assert r.indices.dtype == np.int64


def test_block_shape_respects_budget():
    assert block_shape(10, 100, 2**30) == (10, 100)
    assert block_shape(1000, 100, 16 * 250) == (2, 100)
    q, c = block_shape(1000, 10_000, 16 * 1000)
    assert q * c <= 1000 and q >= 1 and c >= 1
    assert block_shape(5, 5, 1) == (1, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be"),
        ({"k": -3}, "k must be"),
        ({"k": 2.0}, "k must be"),
        ({"k": 2, "score": "l2"}, "score must be"),
        ({"k": 2, "memory_budget_bytes": 0}, "memory_budget_bytes"),
    ],
)
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        exact_search(np.ones((2, 3)), np.ones((4, 3)), **kwargs)


def test_shape_errors_name_the_dimensions():
    with pytest.raises(ConfigError, match="query dimension 3 .* corpus dimension 5"):
        exact_search(np.ones((2, 3)), np.ones((4, 5)), 2)
    with pytest.raises(ConfigError, match="2-D"):
        exact_search(np.ones(3), np.ones((4, 3)), 2)
