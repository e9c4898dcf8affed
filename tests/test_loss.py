"""InfoNCE against a hand computation with explicit loops (no shared matrix code)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from embedrag.engine.data.examples import Example
from embedrag.engine.training.loss import InfoNCELoss
from embedrag.engine.training.sampling import build_batch


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


def _hand_infonce(q_vecs, p_vecs, batch, temperature, in_batch):
    total = 0.0
    for i, q in enumerate(q_vecs):
        own_pos = set(batch.positive_texts[i])
        candidates = []
        for j in range(len(p_vecs)):
            if j == batch.positive_index[i]:
                candidates.append(j)
                continue
            if batch.passages[j] in own_pos:
                continue  # the same text as one of this query's positives: not a negative
            if in_batch or batch.passage_owner[j] == i:
                candidates.append(j)
        logits = {j: _cos(q, p_vecs[j]) / temperature for j in candidates}
        top = max(logits.values())
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits.values()))
        total += log_sum - logits[batch.positive_index[i]]
    return total / len(q_vecs)


EXAMPLES = [
    Example("q0", pos=("shared positive", "p0 other"), neg=("n0a", "n0b", "n0c")),
    Example("q1", pos=("shared positive",), neg=("p0 other", "n1a")),  # its negative is q0's positive
    Example("q2", pos=("p2",), neg=("n2a",)),                          # fewer negatives than asked
    Example("q3", pos=("p3",), neg=()),                                # none at all
    Example("q4", pos=("p4",), neg=("n0a", "p4")),                     # a negative equal to its own pos
]


def _random_batch(seed):
    """A sampled batch of EXAMPLES and random query/passage vectors for it."""
    batch = build_batch(EXAMPLES, neg_nums=2, rng=random.Random(seed))
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(len(batch.queries), 8, generator=generator, dtype=torch.float64)
    p = torch.randn(len(batch.passages), 8, generator=generator, dtype=torch.float64)
    # Identical texts get identical vectors, as a real encoder would give them.
    first_index = {}
    for j, text in enumerate(batch.passages):
        p[j] = p[first_index.setdefault(text, j)]
    return batch, q, p


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infonce_equals_hand_computation(in_batch, seed):
    batch, q, p = _random_batch(seed)
    loss_fn = InfoNCELoss(temperature=0.05, in_batch_negatives=in_batch)
    got = loss_fn(q, p, **batch.loss_inputs())
    expected = _hand_infonce(q.tolist(), p.tolist(), batch, 0.05, in_batch)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_duplicates_of_a_positive_are_masked():
    examples = [Example("q0", pos=("shared positive",), neg=("n0",)),
                Example("q1", pos=("shared positive", "p1"), neg=("n1",))]
    batch = build_batch(examples, neg_nums=2, rng=random.Random(0))
    batch.passages[1] = "shared positive"  # whichever q1 drew, make the clash explicit
    inputs = batch.loss_inputs()
    mask = InfoNCELoss(in_batch_negatives=True).candidate_mask(**inputs)
    for i in range(2):
        for j, text in enumerate(batch.passages):
            if j != batch.positive_index[i] and text in batch.positive_texts[i]:
                assert not mask[i, j]
    # q1's positive is also q0's positive (column 0 vs 1): each sees only its own column.
    assert mask[0, 0] and not mask[0, 1]
    assert mask[1, 1] and not mask[1, 0]


def test_gradients_flow_and_temperature_is_checked():
    batch = build_batch(EXAMPLES, neg_nums=2, rng=random.Random(0))
    q = torch.randn(len(batch.queries), 4, requires_grad=True)
    p = torch.randn(len(batch.passages), 4, requires_grad=True)
    InfoNCELoss()(q, p, **batch.loss_inputs()).backward()
    assert q.grad is not None and p.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        InfoNCELoss(temperature=0)


def _hand_margin_ranking(q_vecs, p_vecs, batch, margin, in_batch):
    hinges = []
    for i, q in enumerate(q_vecs):
        own_pos = set(batch.positive_texts[i])
        positive = _cos(q, p_vecs[batch.positive_index[i]])
        for j in range(len(p_vecs)):
            if j == batch.positive_index[i] or batch.passages[j] in own_pos:
                continue
            if in_batch or batch.passage_owner[j] == i:
                hinges.append(max(0.0, margin - (positive - _cos(q, p_vecs[j]))))
    return sum(hinges) / len(hinges)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_margin_ranking_equals_hand_computation(in_batch, seed):
    from embedrag.engine.training.loss import MarginRankingLoss

    batch, q, p = _random_batch(seed)
    got = MarginRankingLoss(margin=0.3, in_batch_negatives=in_batch)(q, p, **batch.loss_inputs())
    expected = _hand_margin_ranking(q.tolist(), p.tolist(), batch, 0.3, in_batch)
    assert expected > 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_margin_ranking_is_zero_once_every_positive_clears_the_margin():
    from embedrag.engine.training.loss import MarginRankingLoss

    examples = [Example("q0", pos=("p0",), neg=("n0",)), Example("q1", pos=("p1",), neg=("n1",))]
    batch = build_batch(examples, neg_nums=1, rng=random.Random(0))
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # Passages: p0, p1, n0, n1. Each positive is its query's direction; negatives are 60 degrees off.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.866], [0.866, 0.5]], requires_grad=True)
    loss_fn = MarginRankingLoss(margin=0.1, in_batch_negatives=False)
    loss = loss_fn(q, p, **batch.loss_inputs())
    assert loss.item() == 0.0
    loss.backward()  # a batch that already clears the margin still back-propagates (to zeros)
    assert MarginRankingLoss(margin=0.6, in_batch_negatives=False)(q, p, **batch.loss_inputs()).item() \
        == pytest.approx(0.1, abs=1e-4)
    with pytest.raises(ValueError):
        MarginRankingLoss(margin=-1)


def _hand_reverse_infonce(q_vecs, p_vecs, batch, temperature, in_batch):
    """Each query's sampled positive ranks the batch's queries; a query that has that
    passage text among its positives is not a negative for it."""
    total = 0.0
    for i in range(len(q_vecs)):
        positive = p_vecs[batch.positive_index[i]]
        text = batch.passages[batch.positive_index[i]]
        candidates = [j for j in range(len(q_vecs))
                      if j == i or (in_batch and text not in batch.positive_texts[j])]
        logits = {j: _cos(positive, q_vecs[j]) / temperature for j in candidates}
        top = max(logits.values())
        total += top + math.log(sum(math.exp(v - top) for v in logits.values())) - logits[i]
    return total / len(q_vecs)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_infonce_equals_hand_computation(in_batch, seed):
    from embedrag.engine.training.loss import SymmetricInfoNCELoss

    batch, q, p = _random_batch(seed)
    got = SymmetricInfoNCELoss(temperature=0.05, in_batch_negatives=in_batch)(q, p, **batch.loss_inputs())
    forward = _hand_infonce(q.tolist(), p.tolist(), batch, 0.05, in_batch)
    reverse = _hand_reverse_infonce(q.tolist(), p.tolist(), batch, 0.05, in_batch)
    if in_batch:
        assert reverse > 0
    else:
        assert reverse == 0  # one candidate per positive: the reverse direction adds nothing
    assert got.item() == pytest.approx((forward + reverse) / 2, rel=1e-5)


def test_symmetric_infonce_never_contrasts_a_positive_with_a_query_it_also_answers():
    from embedrag.engine.training.loss import SymmetricInfoNCELoss

    examples = [Example("q0", pos=("shared positive",), neg=("n0",)),
                Example("q1", pos=("shared positive",), neg=("n1",)),
                Example("q2", pos=("p2",), neg=("n2",))]
    batch = build_batch(examples, neg_nums=1, rng=random.Random(0))
    mask = SymmetricInfoNCELoss().query_mask(**batch.loss_inputs())
    assert mask.tolist() == [[True, False, True], [False, True, True], [True, True, True]]
