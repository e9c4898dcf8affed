"""Answer-quality evaluation of the whole RAG loop: for each model, retrieve k passages per
question, answer (``--llm none`` extractively, or with an LLM) and score the answers
(:mod:`answer_metrics`), then compare each model with the first as retrieval ``eval``
does (paired randomization test, wins/ties/losses)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.answer_sets import AnswerSet
from embedrag.engine.evaluation.answer_metrics import FAITHFUL_THRESHOLD
from embedrag.engine.evaluation.evaluate import ComparedReport, ModelSpec

if TYPE_CHECKING:
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.evaluation.significance import PairedComparison
    from embedrag.engine.llm.rag import Generator
    from embedrag.engine.retrieval.store import Hit

logger = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
AUTO = "auto"


@dataclass
class AnswerModelResult:
    name: str
    model: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    answers: list[dict[str, Any]]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnswerReport(ComparedReport):
    """The outcome of :func:`evaluate_answers`; ``models[0]`` is the baseline. Shaped like
    retrieval's ``EvaluationReport`` (the CLI tables, ``plot_report`` and the server's
    report page read both)."""

    test_set: dict[str, Any]
    k: int
    generator: str
    scorers: dict[str, Any]
    models: list[AnswerModelResult]
    seconds: float
    candidates: str = "retrieved"
    _comparisons: dict[tuple[str, str], PairedComparison] = field(default_factory=dict, repr=False)

    def comparison(self, model: AnswerModelResult, metric: str) -> PairedComparison:
        """Paired over the questions both models have ``metric`` for (corpus ``bleu`` is
        compared through ``sentence_bleu``)."""
        from embedrag.engine.evaluation.significance import compare

        per_query = "sentence_bleu" if metric == "bleu" else metric
        key = (model.name, metric)
        if key not in self._comparisons:
            def having(scores):
                return {q: s for q, s in scores.items() if per_query in s}

            self._comparisons[key] = compare(per_query, having(self.models[0].per_query), having(model.per_query))
        return self._comparisons[key]

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        from embedrag._version import __version__

        return {"embedrag_version": __version__, "kind": "answers", "test_set": self.test_set, "k": self.k,
                "generator": self.generator, "scorers": self.scorers, "baseline": self.models[0].name,
                "significance": self._significance_record(),
                "seconds": round(self.seconds, 3), "models": self._model_rows(("per_query", "answers"), per_query)}


@dataclass
class AnswerScorers:
    """What scores the answers: BERTScore's model and layer (None: not scored) and the
    faithfulness judge (an embedding model) with its threshold."""

    judge: Encoder
    threshold: float = FAITHFUL_THRESHOLD
    bertscore: Any = None  # answer_metrics.BertScoreModel

    def describe(self) -> dict[str, Any]:
        return {"faithfulness": {"judge": self.judge.name, "method": "max cosine of an answer sentence with a "
                                 "sentence of the passages it cites", "threshold": self.threshold},
                "bertscore": ({"model": self.bertscore.path, "layer": self.bertscore.num_layers,
                               "rescaled": False, "idf": False} if self.bertscore else None),
                "bleu": "sacrebleu corpus BLEU / 100 (sentence BLEU per question for the tests)",
                "rouge": "rouge-score F1, stemmed", "accuracy": "answer_metrics.parse_choice"}


def default_scoring_model(models: Sequence[ModelSpec]) -> str:
    """The bundled all-MiniLM-L6-v2 when installed (one fixed model, so scores compare
    across runs), else the baseline model."""
    from embedrag.engine.encoding.models import DEFAULT_MODEL, bundled_model_path

    bundled = bundled_model_path(DEFAULT_MODEL)
    return str(bundled) if bundled else models[0].path


def make_scorers(models: Sequence[ModelSpec], *, judge: str | None = None, threshold: float = FAITHFUL_THRESHOLD,
                 bertscore_model: str | None = AUTO, bertscore_layer: int | None = None,
                 device: str | None = None) -> AnswerScorers:
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.evaluation.answer_metrics import BertScoreModel

    if not 0 < threshold <= 1:
        raise ConfigError(f"--faithfulness-threshold must be in (0, 1], got {threshold}")
    judge_encoder = Encoder.load(judge or default_scoring_model(models), device=device)
    bertscore = None
    if bertscore_model:
        path = default_scoring_model(models) if bertscore_model == AUTO else bertscore_model
        bertscore = BertScoreModel.resolve(path, bertscore_layer)
    return AnswerScorers(judge=judge_encoder, threshold=threshold, bertscore=bertscore)


class CorpusRetriever:
    """Exact search over a corpus embedded by one model (cached as ``eval`` caches it)."""

    def __init__(self, encoder: Encoder, corpus: dict[str, str], *, cache_dir: Path | None, precision: str = "fp32",
                 progress: Progress | None = None, label: str = ""):
        from embedrag.engine.data.testsets import corpus_fingerprint
        from embedrag.engine.encoding.cache import EmbeddingCache, vectors_cache_key
        from embedrag.engine.encoding.encoder import resolve_precision

        precision = resolve_precision(precision, encoder.device)
        self.encoder, self.ids = encoder, list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        cache = EmbeddingCache(cache_dir)
        model_fp, corpus_fp = vectors_cache_key(encoder, precision), corpus_fingerprint(corpus.items())
        vectors = cache.load(model_fp, corpus_fp, len(self.ids))
        if vectors is None:
            report = (lambda done, total: progress(f"{label}: corpus", done, total)) if progress else None
            vectors = encoder.encode(self.texts, "passage", precision=precision, progress=report)
            cache.store(model_fp, corpus_fp, vectors)
        self.vectors = vectors

    def search_many(self, questions: Sequence[str], k: int) -> list[list[Hit]]:
        from embedrag.engine.retrieval.search import exact_search
        from embedrag.engine.retrieval.store import Hit

        found = exact_search(self.encoder.encode(list(questions), "query"), self.vectors, min(k, len(self.ids)))
        return [[Hit(rank=r + 1, score=float(score), chunk_id=self.ids[row], doc_id=self.ids[row], chunk=0,
                     text=self.texts[row], title="", source="corpus")
                 for r, (row, score) in enumerate(zip(rows, scores)) if row >= 0]
                for rows, scores in zip(found.indices, found.scores)]


def _matches(hit_text: str, positives: Sequence[str]) -> bool:
    from embedrag.engine.data.corpus import normalize_text

    text = normalize_text(hit_text)
    return any(p and (p == text or p in text or text in p) for p in (normalize_text(x) for x in positives))


def _answer_all(answer_set: AnswerSet, hits: list[list[Hit]], generator: Generator,
                progress: Progress | None, label: str) -> list[str]:
    from embedrag.engine.llm.rag import NoGenerator, build_messages, extractive_answer

    answers = []
    for number, (item, found) in enumerate(zip(answer_set.items, hits), start=1):
        question = item.question
        if item.choices:
            question += "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(item.choices))
        if isinstance(generator, NoGenerator):
            answers.append(extractive_answer(item.question, found))
        else:
            answers.append("".join(generator.stream(build_messages(question, found))))
        if progress:
            progress(f"{label}: answers", number, len(answer_set.items))
    return answers


def score_answers(answer_set: AnswerSet, answers: Sequence[str], hits: Sequence[Sequence[Hit]], k: int,
                  scorers: AnswerScorers) -> tuple[dict[str, float], dict[str, dict[str, float]], list[dict]]:
    """(means, per-question scores, per-question records) of one model's answers."""
    import numpy as np

    from embedrag.engine.evaluation import answer_metrics as am

    items = answer_set.items
    per_query: dict[str, dict[str, float]] = {item.id: {} for item in items}
    records = [{"id": item.id, "answer": answer, "retrieved": [h.chunk_id for h in found]}
               for item, answer, found in zip(items, answers, hits)]
    for item, answer, record in zip(items, answers, records):
        if item.multiple_choice:
            record["choice"] = am.parse_choice(answer, item.choices)
            per_query[item.id]["accuracy"] = float(record["choice"] == item.gold)
    text_rows = [i for i, item in enumerate(items) if not item.multiple_choice]
    headline: dict[str, float] = {}
    if text_rows:
        hypotheses, references = [answers[i] for i in text_rows], [items[i].answer for i in text_rows]
        headline["bleu"], sentence = am.bleu(hypotheses, references)
        columns = {"sentence_bleu": sentence, **am.rouge(hypotheses, references)}
        if scorers.bertscore is not None:
            columns["bertscore_f1"] = am.bertscore(hypotheses, references, scorers.bertscore,
                                                   device=scorers.judge.device)
        for name, values in columns.items():
            for i, value in zip(text_rows, values):
                per_query[items[i].id][name] = float(value)
    faithful = am.faithfulness(answers, [[h.text for h in found] for found in hits], scorers.judge,
                               threshold=scorers.threshold)
    for item, value, found in zip(items, faithful, hits):
        per_query[item.id]["faithfulness"] = value
        if item.pos:
            per_query[item.id][f"hit@{k}"] = float(any(_matches(h.text, item.pos) for h in found))
    names = dict.fromkeys(name for scores in per_query.values() for name in scores)
    means = {**headline, **{n: float(np.mean([s[n] for s in per_query.values() if n in s])) for n in names}}
    return means, per_query, records


def evaluate_answers(
    answer_set: AnswerSet,
    models: Sequence[ModelSpec | str],
    *,
    k: int = 5,
    corpus: dict[str, str] | None = None,
    db: str | os.PathLike | None = None,
    table: str = "docs",
    generator: Generator | None = None,
    scorers: AnswerScorers | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    precision: str = "fp32",
    device: str | None = None,
    progress: Progress | None = None,
) -> AnswerReport:
    """Run the RAG loop for each model on ``answer_set`` and score its answers. Retrieval is
    over ``db``/``table`` (one model: the table's) or ``corpus`` (id -> text; default: the
    set's own ``pos`` passages), embedded by each model."""
    from embedrag.engine.encoding.cache import default_cache_dir
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.llm.rag import NoGenerator

    if k <= 0:
        raise ConfigError(f"--k must be positive, got {k}")
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    if not specs:
        raise ConfigError("no model to evaluate")
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"model names must be unique, got {', '.join(s.name for s in specs)}")
    if db is not None and len(specs) > 1:
        raise ConfigError("with --db give one --model (the table's); to compare models give --corpus instead")
    if db is None:
        corpus = corpus if corpus is not None else answer_set.corpus()
        if not corpus:
            raise ConfigError("nothing to retrieve from: give --corpus or --db, or \"pos\" passages in the answers file")
    generator = generator or NoGenerator()
    scorers = scorers or make_scorers(specs, device=device)
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
    started = time.perf_counter()
    results = []
    for spec in specs:
        model_started = time.perf_counter()
        if db is not None:
            from embedrag.engine.retrieval.store import Retriever

            retriever: Any = Retriever(db, table, model=spec.path, device=device)
        else:
            retriever = CorpusRetriever(Encoder.load(spec.path, device=device), corpus, cache_dir=cache,
                                        precision=precision, progress=progress, label=spec.name)
        questions = [item.question for item in answer_set.items]
        hits = retriever.search_many(questions, k)
        answers = _answer_all(answer_set, hits, generator, progress, spec.name)
        means, per_query, records = score_answers(answer_set, answers, hits, k, scorers)
        results.append(AnswerModelResult(name=spec.name, model=spec.path, metrics=means, per_query=per_query,
                                         answers=records, seconds=round(time.perf_counter() - model_started, 3),
                                         settings={"k": k, "retrieval": "table" if db else "corpus"}))
    described = answer_set.describe()
    described["corpus"] = (None if db else len(corpus))
    return AnswerReport(test_set=described, k=k, generator=generator.name, scorers=scorers.describe(),
                        models=results, seconds=time.perf_counter() - started)
