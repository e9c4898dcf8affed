"""Hard-negative mining: for each query, passages the model ranks high that are neither
positives nor suspiciously close to one.

Users of other miners find that many "hard negatives" are unlabelled positives
(FlagEmbedding#850, #464), which then train the model away from right answers. Three
guards, each counted in the report:

- a rank range that skips the very top of the ranking, where unlabelled positives live;
- margins against the query's own positive score (NV-Retriever's TopK-PercPos): a
  candidate scoring above ``relative_margin`` x the weakest positive's score, or within
  ``absolute_margin`` of it, is dropped;
- exact identity by normalised text: never a positive, the query itself, a negative the
  line already has, or the same passage twice.

Candidates come from dense retrieval with the model (exact search, the eval code path),
BM25, or both fused by reciprocal rank; margins always use the model's similarity.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.data.corpus import (
    Corpus,
    corpus_from_examples,
    load_corpus,
    normalize_text,
    testset_over_corpus,
)
from embedrag.engine.data.examples import Example
from embedrag.engine.encoding.models import DEFAULT_MODEL

if TYPE_CHECKING:
    import numpy as np

    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)

STRATEGIES = ("dense", "bm25", "hybrid")
SAMPLING = ("top", "random")
SCORE_FORMULAS = ("similarity", "anchor-minus-positive")
FILTERS = ("positive", "query", "duplicate", "relative_margin", "absolute_margin")
FAILING_CANDIDATES = ("per-query", "all")
RRF_K = 60
Progress = Callable[[str, int, int], None]


def parse_range(value: str) -> tuple[int, int]:
    """``"10-100"`` -> (10, 100): skip the first 10 results, consider ranks 11 to 100."""
    start, sep, end = value.partition("-")
    try:
        first, last = int(start), int(end)
    except ValueError:
        raise ConfigError(f"--range must look like 10-100, got {value!r}") from None
    if not sep or first < 0 or last <= first:
        raise ConfigError(f"--range {value!r}: need 0 <= START < END")
    return first, last


@dataclass
class MineConfig:
    """How candidates are found and which become negatives; see docs/commands/mine.md."""

    negatives: int = 7
    range_start: int = 10
    range_end: int = 100
    sampling: str = "top"
    relative_margin: float | None = 0.95
    absolute_margin: float | None = None
    strategy: str = "dense"
    score_formula: str = "similarity"
    positive_weight: float = 0.5
    replace: bool = False
    with_scores: bool = False
    seed: int = 42
    batch_size: int = 64
    num_processes: int = 1
    precision: str = "auto"  # of the vectors mined with, as eval's --precision
    max_batch_tokens: int | None = None

    def validate(self) -> MineConfig:
        from embedrag.engine.encoding.precision import canonical_precision

        if self.negatives < 1:
            raise ConfigError(f"--negatives must be at least 1, got {self.negatives}")
        if self.range_start < 0 or self.range_end <= self.range_start:
            raise ConfigError(f"--range {self.range_start}-{self.range_end}: need 0 <= START < END")
        for name, allowed in (("strategy", STRATEGIES), ("sampling", SAMPLING),
                              ("score_formula", SCORE_FORMULAS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.relative_margin is not None and not 0 < self.relative_margin <= 1:
            raise ConfigError(f"--relative-margin must be in (0, 1], got {self.relative_margin}")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ConfigError(f"--absolute-margin must be >= 0, got {self.absolute_margin}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if self.num_processes < 1:
            raise ConfigError(f"--num-processes must be positive, got {self.num_processes}")
        self.precision = canonical_precision(self.precision)
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ConfigError(f"--max-batch-tokens must be positive, got {self.max_batch_tokens}")
        return self


@dataclass
class MineReport:
    """What mining did: counts per filter, negatives per query, time."""

    input: str
    output: str | None
    corpus: str
    corpus_size: int
    queries: int
    written: int
    skipped_no_positive: int
    candidates_considered: int
    removed: dict[str, int]
    negatives_histogram: dict[int, int]
    mined_negatives: int
    seconds: float
    encode_seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def negatives_per_query(self) -> float:
        return self.mined_negatives / self.written if self.written else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["negatives_histogram"] = {str(k): v for k, v in sorted(self.negatives_histogram.items())}
        data["negatives_per_query"] = round(self.negatives_per_query, 3)
        return data


# ---------------------------------------------------------------------- inputs
def load_input(input: str | os.PathLike | None = None, *, beir: str | os.PathLike | None = None,
               split: str = "train") -> tuple[list[Example], Corpus | None, str]:
    """The lines to mine for, and the corpus that comes with them (BEIR) or None."""
    from embedrag.engine.data.examples import load_examples

    if (input is None) == (beir is None):
        raise ConfigError("pass exactly one of --input FILE or --beir FOLDER")
    if input is not None:
        return load_examples(input), None, str(input)
    from embedrag.engine.data.testsets import load_beir_testset

    test_set = load_beir_testset(beir, split)
    examples = []
    for qid, docs in test_set.qrels.items():
        positives = tuple(test_set.corpus[d] for d, grade in docs.items() if grade > 0)
        examples.append(Example(query=test_set.queries[qid], pos=positives, id=qid,
                                source=f"{beir}:{split}"))
    corpus = Corpus(list(test_set.corpus), list(test_set.corpus.values()), f"{beir} corpus")
    return examples, corpus, f"{beir} ({split})"


def load_table_corpus(db: str | os.PathLike, table: str, encoder: Encoder) -> Corpus:
    """An indexed table's chunks; its stored vectors are reused when ``encoder`` made them."""
    import numpy as np

    from embedrag.engine.encoding.fingerprint import model_fingerprint
    from embedrag.engine.retrieval.store import open_table, table_settings

    handle = open_table(db, table)
    settings = table_settings(handle)
    columns = handle.to_arrow().select(["chunk_id", "text", "vector"]).to_pydict()
    corpus = Corpus.from_texts(list(zip(columns["chunk_id"], columns["text"])), f"{db}:{table}")
    if settings.fingerprint == model_fingerprint(encoder):
        row_of = {chunk_id: i for i, chunk_id in enumerate(columns["chunk_id"])}
        corpus.vectors = np.asarray([columns["vector"][row_of[c]] for c in corpus.ids], np.float32)
    else:
        logger.info("table %s was embedded with %s: re-embedding its chunks", table, settings.model)
    return corpus


# ---------------------------------------------------------------------- mining
def _encode(encoder: Encoder, texts: Sequence[str], kind: str, config: MineConfig, label: str,
            progress: Progress | None) -> np.ndarray:
    return encoder.encode(list(texts), kind, batch_size=config.batch_size, num_processes=config.num_processes,
                          precision=config.precision, max_batch_tokens=config.max_batch_tokens,
                          progress=(lambda done, total: progress(label, done, total)) if progress else None)


def embed_corpus(encoder: Encoder, corpus: Corpus, config: MineConfig, cache_dir: Path | None,
                 progress: Progress | None) -> np.ndarray:
    """``corpus``'s passage vectors: its own, or cached in ``cache_dir`` (shared with eval)."""
    from embedrag.engine.encoding.cache import EmbeddingCache, vectors_cache_key

    if corpus.vectors is not None:
        return corpus.vectors
    if cache_dir is None:
        return _encode(encoder, corpus.texts, "passage", config, "corpus", progress)
    cache = EmbeddingCache(cache_dir)
    model_fp, corpus_fp = vectors_cache_key(encoder, config.precision), corpus.fingerprint
    vectors = cache.load(model_fp, corpus_fp, len(corpus.ids))
    if vectors is None:
        vectors = _encode(encoder, corpus.texts, "passage", config, "corpus", progress)
        cache.store(model_fp, corpus_fp, vectors)
    return vectors


def _fuse(rankings: Sequence[np.ndarray], depth: int) -> list[list[int]]:
    """Reciprocal-rank fusion of several per-query row rankings (-1 = no result)."""
    fused = []
    for rows in zip(*rankings):
        scores: dict[int, float] = {}
        for ranking in rows:
            for rank, row in enumerate(ranking):
                if row >= 0:
                    scores[int(row)] = scores.get(int(row), 0.0) + 1.0 / (RRF_K + rank + 1)
        fused.append(sorted(scores, key=lambda r: (-scores[r], r))[:depth])
    return fused


def _candidate_rankings(query_vectors, corpus_vectors, queries: Sequence[str], corpus: Corpus,
                        config: MineConfig) -> list[list[int]]:
    """Each query's corpus rows, best first, down to ``range_end``."""
    from embedrag.engine.retrieval.search import exact_search

    depth = config.range_end
    dense = bm25 = None
    if config.strategy in ("dense", "hybrid"):
        dense = exact_search(query_vectors, corpus_vectors, depth).indices
    if config.strategy in ("bm25", "hybrid"):
        from embedrag.engine.retrieval.lexical import BM25Ranker

        bm25 = BM25Ranker(corpus.texts).search(queries, depth)[0]
    if config.strategy == "dense":
        return [list(map(int, row)) for row in dense]
    if config.strategy == "bm25":
        return [[int(r) for r in row if r >= 0] for row in bm25]
    return _fuse([dense, bm25], depth)


def mine_examples(
    examples: Sequence[Example],
    corpus: Corpus,
    encoder: Encoder,
    config: MineConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], MineReport]:
    """Mine negatives for ``examples`` from ``corpus`` with ``encoder``; returns the output
    lines (the JSONL contract, plus ``pos_scores``/``neg_scores`` with ``with_scores``) and
    the report."""
    import numpy as np

    from embedrag.engine.encoding.encoder import resolve_precision

    config = (config or MineConfig()).validate()
    # Resolved once, so the cache key and the report name the precision actually used.
    config = replace(config, precision=resolve_precision(config.precision, encoder.device))
    started = time.perf_counter()
    usable = [e for e in examples if e.pos]
    skipped = len(examples) - len(usable)
    if not usable:
        raise DataError([f"{corpus.name}: no query has a positive passage to mine against"])

    corpus_vectors = embed_corpus(encoder, corpus, config, Path(cache_dir) if cache_dir else None, progress)
    row_of_key = {normalize_text(text): row for row, text in enumerate(corpus.texts)}
    # Positives (and, for scores, existing negatives) not in the corpus are embedded too.
    extra = sorted({t for e in usable for t in (*e.pos, *(e.neg if config.with_scores else ()))
                    if normalize_text(t) not in row_of_key})
    extra_vectors = _encode(encoder, extra, "passage", config, "positives", progress) if extra \
        else np.zeros((0, corpus_vectors.shape[1]), np.float32)
    extra_row = {t: i for i, t in enumerate(extra)}
    query_vectors = _encode(encoder, [e.query for e in usable], "query", config, "queries", progress)
    encode_seconds = time.perf_counter() - started

    def vector(text: str) -> np.ndarray:
        row = row_of_key.get(normalize_text(text))
        return corpus_vectors[row] if row is not None else extra_vectors[extra_row[text]]

    rankings = _candidate_rankings(query_vectors, corpus_vectors, [e.query for e in usable], corpus, config)
    removed = Counter({name: 0 for name in FILTERS})
    histogram: Counter[int] = Counter()
    considered = mined_total = 0
    lines = []
    for index, (example, ranking) in enumerate(zip(usable, rankings)):
        positive_vectors = np.stack([vector(t) for t in example.pos])
        window = ranking[config.range_start:config.range_end]
        considered += len(window)
        chosen, dropped = select_negatives(example, window, corpus, corpus_vectors, query_vectors[index],
                                           positive_vectors, config, index)
        removed.update(dropped)
        kept_negatives = () if config.replace else example.neg
        negatives = [*kept_negatives, *(corpus.texts[row] for row in chosen)]
        histogram[len(chosen)] += 1
        mined_total += len(chosen)
        line = _example_line(example, negatives)
        if config.with_scores:
            q = query_vectors[index]
            line["pos_scores"] = [round(float(s), 6) for s in positive_vectors @ q]
            old = [float(vector(t) @ q) for t in kept_negatives]
            line["neg_scores"] = [round(s, 6) for s in old + [float(corpus_vectors[r] @ q) for r in chosen]]
        lines.append(line)
        if progress:
            progress("mining", index + 1, len(usable))
    report = MineReport(
        input="", output=None, corpus=corpus.name, corpus_size=len(corpus.ids), queries=len(examples),
        written=len(lines), skipped_no_positive=skipped, candidates_considered=considered,
        removed=dict(removed), negatives_histogram=dict(histogram), mined_negatives=mined_total,
        seconds=round(time.perf_counter() - started, 3), encode_seconds=round(encode_seconds, 3),
        config=asdict(config))
    return lines, report


def _example_line(example: Example, negatives: Sequence[str] | None = None) -> dict[str, Any]:
    """A line of the JSONL contract (its own negatives unless others are given)."""
    line: dict[str, Any] = {"id": example.id} if example.id is not None else {}
    line.update(query=example.query, pos=list(example.pos),
                neg=list(example.neg if negatives is None else negatives))
    return line


def select_negatives(example: Example, window: Sequence[int], corpus: Corpus, corpus_vectors,
                     query_vector, positive_vectors, config: MineConfig,
                     index: int) -> tuple[list[int], Counter]:
    """The corpus rows that become ``example``'s negatives, from ``window`` (its candidate
    rows in rank order), and how many candidates each filter removed."""
    import numpy as np

    positives = {normalize_text(t) for t in example.pos}
    taken = set() if config.replace else {normalize_text(t) for t in example.neg}
    query_key = normalize_text(example.query)
    reference = float(np.min(positive_vectors @ query_vector))
    dropped: Counter = Counter()
    survivors: list[tuple[int, float]] = []
    for row in window:
        key = normalize_text(corpus.texts[row])
        if key in positives:
            dropped["positive"] += 1
            continue
        if key == query_key:
            dropped["query"] += 1
            continue
        if key in taken:
            dropped["duplicate"] += 1
            continue
        score = float(corpus_vectors[row] @ query_vector)
        if config.relative_margin is not None and score > config.relative_margin * reference:
            dropped["relative_margin"] += 1
            continue
        if config.absolute_margin is not None and score > reference - config.absolute_margin:
            dropped["absolute_margin"] += 1
            continue
        taken.add(key)
        survivors.append((row, score))
    if config.score_formula == "anchor-minus-positive" and survivors:
        # The ScienceQA report's ranking: close to the query, far from the positive.
        closeness = (corpus_vectors[[r for r, _ in survivors]] @ positive_vectors.T).max(axis=1)
        ranked = sorted(range(len(survivors)), key=lambda i: (
            -(survivors[i][1] - config.positive_weight * float(closeness[i])), i))
        survivors = [survivors[i] for i in ranked]
    if config.sampling == "random" and len(survivors) > config.negatives:
        rng = np.random.default_rng([config.seed, index])
        picked = sorted(rng.choice(len(survivors), size=config.negatives, replace=False))
        return [survivors[i][0] for i in picked], dropped
    return [row for row, _ in survivors[: config.negatives]], dropped


def write_lines(lines: Sequence[dict[str, Any]], output: str | os.PathLike) -> Path:
    """JSONL through a temporary sibling and a rename: no half-written training file."""
    import json

    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; give a file name such as train.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return output


def mine(
    input: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    model: str | Encoder = DEFAULT_MODEL,
    beir: str | os.PathLike | None = None,
    split: str = "train",
    corpus: str | os.PathLike | None = None,
    db: str | os.PathLike | None = None,
    table: str = "docs",
    config: MineConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> MineReport:
    """Mine hard negatives for the lines of ``input`` (or a BEIR split) and write them to
    ``output`` as training JSONL. The corpus is, in order of precedence: ``db``/``table``,
    ``corpus`` (a file or folder), the BEIR folder's corpus, the input's own passages.
    ``options`` are :class:`MineConfig` fields (``negatives=7, range_start=10, ...``)."""
    from embedrag.engine.encoding.encoder import Encoder

    if config is not None and options:
        raise ConfigError("pass either config= or MineConfig options, not both")
    config = (config or MineConfig(**options)).validate()
    examples, own_corpus, label = load_input(input, beir=beir, split=split)
    encoder = model if isinstance(model, Encoder) else Encoder.load(model, device=device)
    if db is not None:
        candidates = load_table_corpus(db, table, encoder)
    elif corpus is not None:
        candidates = load_corpus(corpus)
    else:
        candidates = own_corpus or corpus_from_examples(examples, str(input))
    lines, report = mine_examples(examples, candidates, encoder, config, cache_dir=cache_dir,
                                  progress=progress)
    report.input = label
    if output is not None:
        report.output = str(write_lines(lines, output))
    return report


# ---------------------------------------------------------------------- hard examples
@dataclass
class FailingReport:
    """Which lines the model still gets wrong: Top-K accuracy over all lines, lines kept."""

    input: str
    output: str | None
    candidates: str
    k: int
    lines: int
    kept: int
    accuracy: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)




def select_failing(
    examples: Sequence[Example],
    encoder: Encoder,
    k: int,
    *,
    candidates: str = "per-query",
    corpus: Corpus | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    num_processes: int = 1,
    precision: str = "auto",
    max_batch_tokens: int | None = None,
) -> tuple[list[Example], FailingReport]:
    """The lines whose positive is not in the model's top ``k``: among the line's own pos +
    neg (``per-query``, eval's ``--candidates per-query``) or over ``corpus`` (``all``; the
    lines' pooled passages when None). Ranked by eval's code, so a line is kept exactly
    when eval (at the same ``precision``) gives it hit@k = 0."""
    from embedrag.engine.data.testsets import testset_from_examples
    from embedrag.engine.encoding.cache import EmbeddingCache
    from embedrag.engine.evaluation.evaluate import evaluate_model

    if candidates not in FAILING_CANDIDATES:
        raise ConfigError(f"--candidates must be one of {', '.join(FAILING_CANDIDATES)}, got {candidates!r}")
    if k < 1:
        raise ConfigError(f"--only-failing must be at least 1, got {k}")
    usable = [e for e in examples if e.pos]
    if not usable:
        raise DataError(["no line has a positive passage"])
    started = time.perf_counter()
    if candidates == "all" and corpus is not None:
        test_set = testset_over_corpus(usable, corpus)
    else:
        test_set = testset_from_examples(usable, name="lines", source="lines")
    ks = sorted({1, 3, 5, k})
    result = evaluate_model(encoder, test_set, name="model", ks=ks, batch_size=batch_size,
                            cache=EmbeddingCache(Path(cache_dir) if cache_dir else None),
                            candidates="all" if candidates == "all" else "per-query",
                            progress=progress, num_processes=num_processes, precision=precision,
                            max_batch_tokens=max_batch_tokens)
    kept = [example for example, qid in zip(usable, test_set.qrels) if result.per_query[qid][f"hit@{k}"] == 0]
    accuracy = {f"top{cut}": result.metrics[f"hit@{cut}"] for cut in ks}
    report = FailingReport(input="", output=None, candidates=candidates, k=k, lines=len(usable), kept=len(kept),
                           accuracy=accuracy, seconds=round(time.perf_counter() - started, 3))
    return kept, report


def only_failing(
    input: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    k: int = 3,
    model: str | Encoder = DEFAULT_MODEL,
    beir: str | os.PathLike | None = None,
    split: str = "train",
    candidates: str = "per-query",
    corpus: str | os.PathLike | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    num_processes: int = 1,
    precision: str = "auto",
    max_batch_tokens: int | None = None,
) -> FailingReport:
    """Write the lines of ``input`` (or a BEIR split) whose positive the model does not rank
    in its top ``k`` to ``output``: the second-stage "hard example" training set."""
    from embedrag.engine.encoding.encoder import Encoder

    examples, own_corpus, label = load_input(input, beir=beir, split=split)
    if candidates == "per-query" and not any(e.neg for e in examples):
        raise ConfigError("--candidates per-query ranks each line's own pos + neg, and no line has a neg: "
                          "mine negatives first, or use --candidates all")
    encoder = model if isinstance(model, Encoder) else Encoder.load(model, device=device)
    pool = load_corpus(corpus) if corpus is not None else own_corpus
    kept, report = select_failing(examples, encoder, k, candidates=candidates, corpus=pool,
                                  batch_size=batch_size, cache_dir=cache_dir, progress=progress,
                                  num_processes=num_processes, precision=precision,
                                  max_batch_tokens=max_batch_tokens)
    report.input = label
    if output is not None:
        report.output = str(write_lines([_example_line(e) for e in kept], output))
    return report
