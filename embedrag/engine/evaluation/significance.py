"""Is one model really better than another on the same queries? Paired tests over
per-query scores.

Both tests pair each query's score under the baseline with its score under the model:

- the paired randomization (permutation) test: under the null hypothesis the two
  scores of a query are exchangeable, so each query's difference keeps or flips its sign
  at random; the p-value is the share of the ``resamples`` sign assignments whose mean
  difference is at least as far from zero as the observed one (two-sided). With few
  queries every assignment is enumerated (exact). scipy's ``permutation_test`` does the
  work, seeded, so a report is reproducible;
- the paired t-test (scipy's ``ttest_rel``), which assumes roughly normal differences.

Retrieval metrics are bounded and often tied (hit@k is 0 or 1), which is why the
randomization test is the one IR papers report (Smucker, Allan & Carterette, CIKM 2007);
the t-test is shown beside it because readers know it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
# Per-query differences smaller than this are ties (floating-point noise, not a change).
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PairedComparison:
    """A model against the baseline on one metric, over the queries both were scored on."""

    metric: str
    queries: int
    baseline: float
    model: float
    gain: float
    p_permutation: float
    p_ttest: float
    wins: int
    ties: int
    losses: int

    @property
    def significant(self) -> bool:
        """Whether the permutation test rejects "no difference" at the 5 % level."""
        return self.p_permutation < 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    return b - a


def permutation_pvalue(baseline: Sequence[float], model: Sequence[float], *,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p-value of the paired randomization test on mean(model - baseline)."""
    from scipy.stats import permutation_test

    diff = _differences(baseline, model)
    if diff.size == 0 or np.all(np.abs(diff) <= TIE_TOLERANCE):
        return 1.0

    def mean_difference(x, y, axis):
        return np.mean(y - x, axis=axis)

    result = permutation_test((np.asarray(baseline, np.float64), np.asarray(model, np.float64)),
                              mean_difference, permutation_type="samples", vectorized=True,
                              n_resamples=resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(result.pvalue)


def ttest_pvalue(baseline: Sequence[float], model: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (scipy's ``ttest_rel``). Differences that
    are all equal have no variance: p is 1 when they are zero, 0 otherwise."""
    from scipy.stats import ttest_rel

    diff = _differences(baseline, model)
    if diff.size < 2 or np.ptp(diff) <= TIE_TOLERANCE:
        return 1.0 if diff.size == 0 or abs(float(diff.mean())) <= TIE_TOLERANCE else 0.0
    return float(ttest_rel(model, baseline).pvalue)


def compare(metric: str, baseline: Mapping[str, Mapping[str, float]], model: Mapping[str, Mapping[str, float]],
            *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> PairedComparison:
    """``model`` against ``baseline`` on ``metric``; both map query id -> metric -> score
    (a report's per-query scores). Only queries scored by both are paired."""
    queries = [q for q in baseline if q in model]
    a = [baseline[q][metric] for q in queries]
    b = [model[q][metric] for q in queries]
    diff = _differences(a, b)
    return PairedComparison(
        metric=metric, queries=len(queries),
        baseline=float(np.mean(a)) if a else 0.0, model=float(np.mean(b)) if b else 0.0,
        gain=float(diff.mean()) if diff.size else 0.0,
        p_permutation=permutation_pvalue(a, b, resamples=resamples, seed=seed),
        p_ttest=ttest_pvalue(a, b),
        wins=int((diff > TIE_TOLERANCE).sum()), ties=int((np.abs(diff) <= TIE_TOLERANCE).sum()),
        losses=int((diff < -TIE_TOLERANCE).sum()))


def format_pvalue(p: float) -> str:
    """``p=0.031``, ``p<0.001``: how reports print a p-value."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
