"""Top-K retrieval evaluation of one or more models on one test set.

Each model's embedding settings (pooling, instructions, normalisation, lengths) come
from its own folder, so evaluation embeds exactly as training did. Corpus embeddings
are cached on disk, keyed by model fingerprint + corpus hash, so a re-run costs only
the queries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.data.testsets import TestSet
from embedrag.engine.encoding.cache import EmbeddingCache, default_cache_dir, vectors_cache_key
from embedrag.engine.encoding.fingerprint import model_fingerprint  # re-exported: its old home
from embedrag.engine.evaluation.metrics import DEFAULT_KS, check_ks, evaluate_run
from embedrag.engine.retrieval.lexical import BM25_MODEL

if TYPE_CHECKING:

    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.evaluation.significance import PairedComparison

logger = logging.getLogger(__name__)

CANDIDATE_MODES = ("all", "per-query")
Progress = Callable[[str, int, int], None]


@dataclass
class ModelSpec:
    """A model to evaluate: a display name and a folder, hub id or ``final/`` adapter."""

    name: str
    path: str

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        name, sep, path = spec.partition("=")
        if sep and name and path:
            return cls(name.strip(), path.strip())
        if sep:
            raise ConfigError(f"--model {spec!r}: expected NAME=PATH or PATH")
        return cls(Path(spec).name or spec, spec)


@dataclass
class ModelResult:
    """One model's scores and costs."""

    name: str
    model: str
    fingerprint: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    corpus_cached: bool
    corpus_seconds: float
    passages_per_second: float | None
    query_seconds: float
    search_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


class ComparedReport:
    """What a report of models measured against ``models[0]`` shares (retrieval's
    :class:`EvaluationReport`, answer evaluation's ``AnswerReport``): gains, JSON rows
    with the paired tests, the significance record and saving."""

    models: list

    def gain(self, model, metric: str) -> float:
        """Absolute gain of ``model`` over the baseline on ``metric``."""
        return model.metrics[metric] - self.models[0].metrics[metric]

    def comparison(self, model, metric: str) -> PairedComparison:
        raise NotImplementedError

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def _model_rows(self, detail: tuple[str, ...], per_query: bool) -> list[dict[str, Any]]:
        """Each model as a dict with its gains and (after the baseline) its paired tests;
        the ``detail`` fields only with ``per_query``."""
        rows = []
        for index, result in enumerate(self.models):
            row = asdict(result)
            if not per_query:
                for name in detail:
                    row.pop(name)
            row["gain_over_baseline"] = {m: self.gain(result, m) for m in result.metrics}
            if index:
                row["significance_vs_baseline"] = {m: self.comparison(result, m).to_dict() for m in result.metrics}
            rows.append(row)
        return rows

    @staticmethod
    def _significance_record() -> dict[str, Any]:
        from embedrag.engine.evaluation.significance import DEFAULT_RESAMPLES, DEFAULT_SEED

        return {"tests": ["paired randomization (sign-flip), two-sided", "paired t-test"],
                "resamples": DEFAULT_RESAMPLES, "seed": DEFAULT_SEED}

    def save(self, path: str | os.PathLike, per_query: bool = False) -> Path:
        from embedrag.engine.core.atomic import write_json

        return write_json(path, self.to_dict(per_query))


@dataclass
class EvaluationReport(ComparedReport):
    """The outcome of :func:`evaluate`; ``models[0]`` is the baseline."""

    test_set: dict[str, Any]
    ks: tuple[int, ...]
    candidates: str
    models: list[ModelResult]
    seconds: float
    _comparisons: dict[tuple[str, str], PairedComparison] = field(default_factory=dict, repr=False)

    def comparison(self, model: ModelResult, metric: str) -> PairedComparison:
        """``model`` against the baseline on ``metric``: paired permutation test and
        t-test over the per-query scores, wins/ties/losses (see ``significance``)."""
        from embedrag.engine.evaluation.significance import compare

        key = (model.name, metric)
        if key not in self._comparisons:
            self._comparisons[key] = compare(metric, self.models[0].per_query, model.per_query)
        return self._comparisons[key]

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        from embedrag._version import __version__

        return {"embedrag_version": __version__, "test_set": self.test_set, "ks": list(self.ks),
                "candidates": self.candidates, "baseline": self.models[0].name,
                "significance": self._significance_record(),
                "seconds": round(self.seconds, 3), "models": self._model_rows(("per_query",), per_query)}


def _rank(test_set: TestSet, query_vectors, corpus_vectors, doc_ids: list[str], k: int,
          candidates: str) -> dict[str, dict[str, float]]:
    """The run: for each query, its top-k docs and scores."""
    from embedrag.engine.evaluation.metrics import run_from_topk
    from embedrag.engine.retrieval.search import exact_search

    query_ids = list(test_set.qrels)
    if candidates == "all":
        found = exact_search(query_vectors, corpus_vectors, k)
        return run_from_topk(query_ids, doc_ids, found.indices, found.scores)
    row_of = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    run: dict[str, dict[str, float]] = {}
    for q_index, qid in enumerate(query_ids):
        rows = [row_of[d] for d in test_set.candidates.get(qid, [])]
        scores = corpus_vectors[rows] @ query_vectors[q_index]
        run[qid] = {doc_ids[r]: float(s) for r, s in zip(rows, scores)}
    return run


def evaluate_model(encoder: Encoder, test_set: TestSet, *, name: str, ks: Sequence[int],
                   batch_size: int = 64, cache: EmbeddingCache | None = None,
                   candidates: str = "all",
                   progress: Progress | None = None, num_processes: int = 1,
                   precision: str = "fp32", max_batch_tokens: int | None = None) -> ModelResult:
    """Score one loaded model on a test set, encoding in ``precision`` (``auto``: bf16
    where the hardware has it natively, see ``resolve_precision``) with at most
    ``max_batch_tokens`` padded tokens a batch (``None``: the device's default)."""
    from embedrag.engine.encoding.encoder import resolve_precision

    cache = cache or EmbeddingCache(None)
    doc_ids = list(test_set.corpus)
    precision = resolve_precision(precision, encoder.device)
    model_fp = model_fingerprint(encoder)
    cache_fp = vectors_cache_key(encoder, precision, model_fp)
    corpus_fp = test_set.corpus_fingerprint
    started = time.perf_counter()
    corpus_vectors = cache.load(cache_fp, corpus_fp, len(doc_ids))
    cached = corpus_vectors is not None
    if corpus_vectors is None:
        corpus_vectors = encoder.encode(
            [test_set.corpus[d] for d in doc_ids], "passage", batch_size=batch_size, num_processes=num_processes,
            precision=precision, max_batch_tokens=max_batch_tokens,
            progress=(lambda done, total: progress(f"{name}: corpus", done, total)) if progress else None)
        cache.store(cache_fp, corpus_fp, corpus_vectors)
    corpus_seconds = time.perf_counter() - started
    started = time.perf_counter()
    query_ids = list(test_set.qrels)
    query_vectors = encoder.encode(
        [test_set.queries[q] for q in query_ids], "query", batch_size=batch_size, precision=precision,
        max_batch_tokens=max_batch_tokens,
        progress=(lambda done, total: progress(f"{name}: queries", done, total)) if progress else None)
    query_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run = _rank(test_set, query_vectors, corpus_vectors, doc_ids, max(ks), candidates)
    search_seconds = time.perf_counter() - started
    scores = evaluate_run(test_set.qrels, run, ks=ks)
    config = encoder.config
    return ModelResult(
        name=name, model=encoder.name, fingerprint=model_fp, metrics=scores.mean,
        per_query=scores.per_query, corpus_cached=cached,
        corpus_seconds=round(corpus_seconds, 3),
        passages_per_second=None if cached else len(doc_ids) / max(corpus_seconds, 1e-9),
        query_seconds=round(query_seconds, 3), search_seconds=round(search_seconds, 3),
        settings={"pooling": config.pooling, "normalize": config.normalize,
                  "query_instruction": config.query_instruction,
                  "passage_instruction": config.passage_instruction,
                  "query_max_length": config.query_max_length,
                  "passage_max_length": config.passage_max_length, "precision": precision})


def evaluate(
    test_set: TestSet,
    models: Sequence[ModelSpec | str],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    candidates: str = "all",
    max_length: int | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    num_processes: int = 1,
    precision: str = "fp32",
    max_batch_tokens: int | None = None,
    backend: str = "torch",
) -> EvaluationReport:
    """Evaluate each model on ``test_set``; the first model is the baseline. ``num_processes``
    > 1 embeds each corpus in that many worker processes (one per GPU, or CPU processes);
    every model is encoded in ``precision`` (fp32, bf16, fp16 or auto), batches capped at
    ``max_batch_tokens`` padded tokens (``None``: the device's default), by ``backend``
    (torch, or a folder's ONNX/OpenVINO export)."""
    from embedrag.engine.encoding.encoder import Encoder

    ks = check_ks(ks)
    if candidates not in CANDIDATE_MODES:
        raise ConfigError(f"--candidates must be one of {', '.join(CANDIDATE_MODES)}, got {candidates!r}")
    if candidates == "per-query" and not test_set.candidates:
        raise ConfigError("--candidates per-query needs a JSONL test set (each line's pos + neg)")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens <= 0:
        raise ConfigError(f"--max-batch-tokens must be positive, got {max_batch_tokens}")
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    if not specs:
        raise ConfigError("no model to evaluate")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {', '.join(names)}")
    cache = EmbeddingCache(Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache \
        else EmbeddingCache(None)
    started = time.perf_counter()
    results = []
    for spec in specs:
        if spec.path == BM25_MODEL:
            results.append(evaluate_bm25(test_set, name=spec.name, ks=ks, candidates=candidates,
                                         progress=progress))
            continue
        lengths = {"query_max_length": max_length, "passage_max_length": max_length} if max_length else {}
        encoder = Encoder.load(spec.path, device=device, backend=backend, **lengths)
        results.append(evaluate_model(encoder, test_set, name=spec.name, ks=ks, batch_size=batch_size,
                                      cache=cache, candidates=candidates,
                                      progress=progress, num_processes=num_processes, precision=precision,
                                      max_batch_tokens=max_batch_tokens))
        del encoder
    return EvaluationReport(test_set=test_set.describe(), ks=ks, candidates=candidates, models=results,
                            seconds=time.perf_counter() - started)


def evaluate_bm25(test_set: TestSet, *, name: str = BM25_MODEL, ks: Sequence[int] = DEFAULT_KS,
                  candidates: str = "all", progress: Progress | None = None) -> ModelResult:
    """Score BM25 (``lexical.BM25Ranker``) on a test set: the lexical baseline a tuned
    dense model should beat. Passages sharing no term with a query are not retrieved."""
    import numpy as np

    from embedrag.engine.evaluation.metrics import rank_docs
    from embedrag.engine.retrieval.lexical import K1, B, BM25Ranker

    doc_ids = list(test_set.corpus)
    started = time.perf_counter()
    ranker = BM25Ranker([test_set.corpus[d] for d in doc_ids])
    index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    row_of = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    depth = max(ks)
    query_ids = list(test_set.qrels)
    run: dict[str, dict[str, float]] = {}
    for done, qid in enumerate(query_ids, start=1):
        scores = ranker.scores(test_set.queries[qid])
        if candidates == "per-query":
            rows = [row_of[d] for d in test_set.candidates.get(qid, [])]
        else:
            rows = np.flatnonzero(scores).tolist()
        found = {doc_ids[r]: float(scores[r]) for r in rows if scores[r] > 0}
        run[qid] = {d: found[d] for d in rank_docs(found, depth)}
        if progress:
            progress(f"{name}: queries", done, len(query_ids))
    search_seconds = time.perf_counter() - started
    scores = evaluate_run(test_set.qrels, run, ks=ks)
    return ModelResult(
        name=name, model=BM25_MODEL, fingerprint=hashlib.sha256(f"bm25:{K1}:{B}".encode()).hexdigest(),
        metrics=scores.mean, per_query=scores.per_query, corpus_cached=False,
        corpus_seconds=round(index_seconds, 3), passages_per_second=len(doc_ids) / max(index_seconds, 1e-9),
        query_seconds=0.0, search_seconds=round(search_seconds, 3),
        settings={"method": "bm25 (lucene)", "k1": K1, "b": B,
                  "analyzer": "casefold, 33 English stopwords, Snowball English stemmer, CJK per character"})


def plot_report(report: EvaluationReport, metrics: Sequence[str], path: str | os.PathLike) -> Path:
    """A grouped bar chart: one group per metric, one bar per model."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'embedrag[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    width = 0.8 / len(report.models)
    figure, axes = plt.subplots(figsize=(min(14.0, 2.5 + len(metrics) * (0.6 + 0.25 * len(report.models))), 5.0))
    from embedrag.engine.evaluation.significance import format_pvalue

    for index, model in enumerate(report.models):
        values = [model.metrics[m] for m in metrics]
        positions = [i + (index - (len(report.models) - 1) / 2) * width for i in range(len(metrics))]
        bars = axes.bar(positions, values, width, label=model.name)
        # After the baseline, each bar also says whether its difference is more than chance.
        labels = [f"{v:.3f}" if not index else f"{v:.3f} {format_pvalue(report.comparison(model, m).p_permutation)}"
                  for v, m in zip(values, metrics)]
        axes.bar_label(bars, labels=labels, fontsize=6, padding=2, rotation=90)
    axes.set_xticks(range(len(metrics)), metrics)
    axes.set_ylim(0, min(1.3, max(m.metrics[k] for m in report.models for k in metrics) * 1.3 + 0.02))
    axes.set_ylabel("score")
    test = report.test_set
    axes.set_title(f"{test['name']}" + (f" ({test['split']})" if test.get("split") else "")
                   + f": {test['queries']} queries, {test['corpus']} passages"
                   + (f"; p: paired randomization test vs {report.models[0].name}" if len(report.models) > 1 else ""))
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(len(report.models), 4),
                fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def evaluate_table(
    test_set: TestSet,
    db: str | os.PathLike,
    table: str,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    name: str | None = None,
    model: str | None = None,
    hybrid: bool = False,
    device: str | None = None,
    backend: str = "torch",
) -> EvaluationReport:
    """Evaluate retrieval from an indexed LanceDB table with the model that built it.

    The table's chunks are ranked by its own search path (flat, or its ANN index;
    hybrid with ``hybrid``) and folded to documents, each scored by its best chunk.
    Relevance is matched by document id when the test set's ids are the table's (a BEIR
    corpus indexed with its ``_id``), else by passage text."""
    from embedrag.engine.retrieval.store import Retriever

    ks = check_ks(ks)
    retriever = Retriever(db, table, model=model, device=device, backend=backend)
    qrels = _table_qrels(test_set, retriever.table)
    depth = max(ks)
    started = time.perf_counter()
    run: dict[str, dict[str, float]] = {}
    query_ids = list(qrels)
    found = retriever.search_many([test_set.queries[q] for q in query_ids], depth * 4, hybrid=hybrid)
    for qid, hits in zip(query_ids, found):
        docs: dict[str, float] = {}
        for hit in hits:
            docs.setdefault(hit.doc_id, hit.score)  # hits come best first: a doc's best chunk
        run[qid] = dict(list(docs.items())[:depth])
    seconds = time.perf_counter() - started
    scores = evaluate_run(qrels, run, ks=ks)
    label = name or f"{table}{' (hybrid)' if hybrid else ''}"
    result = ModelResult(
        name=label, model=retriever.settings.model, fingerprint=retriever.settings.fingerprint,
        metrics=scores.mean, per_query=scores.per_query, corpus_cached=True,
        corpus_seconds=0.0, passages_per_second=None, query_seconds=round(seconds, 3), search_seconds=0.0,
        settings={"db": str(db), "table": table, "hybrid": hybrid,
                  "ann_index": retriever.index_type})
    described = test_set.describe()
    described["corpus"] = retriever.table.count_rows()
    described["corpus_kind"] = "table chunks"
    return EvaluationReport(test_set=described, ks=ks, candidates="table", models=[result],
                            seconds=time.perf_counter() - started)


def _table_qrels(test_set: TestSet, handle) -> dict[str, dict[str, int]]:
    """The test set's judgements in the table's document ids."""
    columns = handle.to_arrow().select(["doc_id", "text"]).to_pydict()
    table_ids = set(columns["doc_id"])
    judged = {d for docs in test_set.qrels.values() for d in docs}
    if judged <= table_ids:
        return {q: dict(docs) for q, docs in test_set.qrels.items()}
    by_text: dict[str, str] = {}
    for doc_id, text in zip(columns["doc_id"], columns["text"]):
        by_text.setdefault(text.strip(), doc_id)
    qrels: dict[str, dict[str, int]] = {}
    unmatched = []
    for qid, docs in test_set.qrels.items():
        mapped = {}
        for doc_id, grade in docs.items():
            target = by_text.get(test_set.corpus[doc_id].strip())
            if target is None:
                unmatched.append(doc_id)
            else:
                mapped[target] = max(grade, mapped.get(target, grade))
        qrels[qid] = mapped
    if unmatched:
        raise DataError([f"{len(unmatched)} judged passage(s) are not in the table by document id or text "
                         f"(e.g. {test_set.corpus[unmatched[0]][:60]!r}); index the test set's corpus"])
    return qrels
