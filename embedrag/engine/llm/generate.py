"""Training data from documents alone (``embedrag generate``): documents in, training JSONL
(``{"query", "pos", "neg"}``) out, ready for ``train``.

The steps:

1. read the inputs (every type ``index`` reads) and cut them into chunks with the
   model's tokenizer, as ``index`` does (``chunk_size`` 0: one chunk per document);
2. a query writer (``query_writers``: inverse cloze, an OpenAI-compatible server or a
   local causal LM) writes queries for the first ``max_chunks`` chunks;
3. filters drop empty queries, queries over ``max_query_chars`` characters and repeated
   queries (the first chunk keeps a query that several chunks got); with
   ``round_trip_k`` a query stays only if the model ranks its own chunk in the top K of
   all chunks (a query that does not find its chunk is too vague or wrong to teach it);
4. ``negatives`` hard negatives per query are mined from all chunks with ``mine``'s
   code and its false-negative guards (the query's own chunk is never a negative).

Resumable: each chunk's result is appended to a journal beside the output
(``.NAME.generate/queries-KEY.jsonl``, KEY a hash of the writer's settings) and flushed
as soon as it is written, so a re-run, even after a kill, asks only for the chunks not in
the journal, and the filters and mining, which are deterministic, rebuild the same output.
A chunk whose request failed is not journaled, so a re-run retries it. The output itself
is written at the end through a temporary file and a rename. The journal and the corpus
embedding cache stay in that folder for later runs; delete it to start over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, DataError
from embedrag.engine.llm.query_writers import Chunk, ChunkResult, QueryWriter, WrittenQuery

if TYPE_CHECKING:
    from embedrag.engine.data.documents import Document
    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)

# progress(stage, done, total): stages "writing queries", "round trip", "corpus", "queries", "mining"
Progress = Callable[[str, int, int], None]
DROP_REASONS = ("empty", "too_long", "duplicate", "round_trip")


@dataclass
class GenerateConfig:
    """What ``generate`` writes and keeps (the writer's own options go to
    :func:`query_writers.make_query_writer`)."""

    chunk_size: int | None = None  # tokens; None: the model's passage length, as index; 0: whole documents
    chunk_overlap: int = 0
    max_chunks: int | None = None  # write queries for the first N chunks only (a trial)
    max_query_chars: int = 300
    round_trip_k: int = 0  # 0: off
    negatives: int = 7  # 0: no mining (in-batch negatives only)
    range_start: int = 10  # candidates ranked START..END, as mine's --range
    range_end: int = 100
    precision: str = "auto"
    batch_size: int = 64

    def validate(self) -> GenerateConfig:
        from embedrag.engine.encoding.precision import canonical_precision

        if self.chunk_size is not None and self.chunk_size < 0:
            raise ConfigError(f"--chunk-size must be 0 (whole documents) or positive, got {self.chunk_size}")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ConfigError(f"--max-chunks must be at least 1, got {self.max_chunks}")
        for name in ("max_query_chars", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("round_trip_k", "negatives", "chunk_overlap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.range_end <= self.range_start:
            raise ConfigError(f"--range {self.range_start}-{self.range_end}: need 0 <= START < END")
        self.precision = canonical_precision(self.precision)
        return self


@dataclass
class GenerateReport:
    """What was read, written, kept and dropped, and why."""

    output: str
    journal: str
    writer: dict[str, Any]
    documents: int = 0
    chunks: int = 0
    chunks_asked: int = 0
    chunks_from_journal: int = 0
    chunks_skipped: dict[str, int] = field(default_factory=dict)
    chunks_failed: int = 0
    failures: list[str] = field(default_factory=list)
    queries_written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    negatives_per_query: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- chunks
def chunk_documents(documents: Iterable[Document], encoder: Encoder, chunk_size: int | None,
                    chunk_overlap: int = 0) -> list[Chunk]:
    """The chunks ``index`` would make of ``documents``, each keyed by its document id,
    number and text (so the key survives reordering and changes with the text)."""
    from embedrag.engine.data.documents import Chunker

    if chunk_size == 0:
        chunker = None
    else:
        size = chunk_size or max(16, encoder.config.passage_max_length - 2)
        chunker = Chunker(encoder.tokenizer, size, min(chunk_overlap, size - 1))
    chunks = []
    for document in documents:
        pieces = chunker.split(document.text) if chunker else [document.text.strip()]
        for number, text in enumerate(p for p in pieces if p):
            digest = hashlib.sha256(f"{document.id}#{number}\n{text}".encode()).hexdigest()[:20]
            chunks.append(Chunk(key=digest, text=text, title=document.title, source=document.source,
                                document=document.id))
    return chunks


# ---------------------------------------------------------------------- the journal
class Journal:
    """Append-only JSONL of chunk results, one line per chunk, flushed and synced per line.
    A line torn by a kill is cut off when the journal is opened again."""

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict] = {}
        if path.exists():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            self.results[record["chunk"]] = record
            good += len(line)
        if good < len(raw):
            logger.info("%s: dropping a torn last line (%d bytes)", self.path, len(raw) - good)
            with self.path.open("r+b") as handle:
                handle.truncate(good)

    def add(self, result: ChunkResult) -> None:
        record = {"chunk": result.chunk.key, "skipped": result.skipped,
                  "queries": [{"query": q.query, "pos": q.positive} for q in result.queries]}
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.results[result.chunk.key] = record

    def close(self) -> None:
        self._handle.close()


def journal_path(output: Path, writer: QueryWriter) -> Path:
    key = hashlib.sha256(json.dumps(writer.settings(), sort_keys=True).encode()).hexdigest()[:12]
    return output.parent / f".{output.name}.generate" / f"queries-{key}.jsonl"


def write_queries(chunks: Sequence[Chunk], writer: QueryWriter, journal: Journal, report: GenerateReport,
                  progress: Progress | None = None) -> None:
    """Ask ``writer`` for the chunks the journal lacks; journal each answer as it comes."""
    todo = [c for c in chunks if c.key not in journal.results]
    report.chunks_from_journal = len(chunks) - len(todo)
    report.chunks_asked = len(todo)
    done = report.chunks_from_journal

    def record(result: ChunkResult) -> None:
        nonlocal done
        done += 1
        if result.error:
            report.chunks_failed += 1
            if len(report.failures) < 5:
                report.failures.append(result.error)
        else:
            journal.add(result)
        if progress:
            progress("writing queries", done, len(chunks))

    if progress:
        progress("writing queries", done, len(chunks))
    if todo:
        writer.write(todo, record)


# ---------------------------------------------------------------------- filters
def filtered_queries(chunks: Sequence[Chunk], journal: Journal, max_chars: int,
                     dropped: Counter) -> list[tuple[Chunk, WrittenQuery]]:
    """The journaled queries in chunk order, without empty, over-long and repeated ones."""
    from embedrag.engine.data.corpus import normalize_text

    kept, seen = [], set()
    for chunk in chunks:
        record = journal.results.get(chunk.key)
        for item in record["queries"] if record else ():
            query = " ".join(item["query"].split())
            key = normalize_text(query)
            if len(key) < 2:
                dropped["empty"] += 1
            elif len(query) > max_chars:
                dropped["too_long"] += 1
            elif key in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(key)
                kept.append((chunk, WrittenQuery(query, item["pos"])))
    return kept


def round_trip(pairs: Sequence[tuple[Chunk, WrittenQuery]], corpus, corpus_vectors, encoder: Encoder, k: int,
               config: GenerateConfig, progress: Progress | None) -> list[bool]:
    """Whether each query's own chunk is in the model's top ``k`` over the corpus."""
    from embedrag.engine.data.corpus import normalize_text
    from embedrag.engine.retrieval.search import exact_search

    row_of = {normalize_text(t): r for r, t in enumerate(corpus.texts)}
    vectors = encoder.encode([q.query for _, q in pairs], "query", batch_size=config.batch_size,
                             precision=config.precision,
                             progress=(lambda d, t: progress("round trip", d, t)) if progress else None)
    top = exact_search(vectors, corpus_vectors, min(k, len(corpus.texts))).indices
    return [row_of.get(normalize_text(chunk.text)) in set(map(int, row)) for (chunk, _), row in zip(pairs, top)]


# ---------------------------------------------------------------------- the command
def generate(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    writer: QueryWriter | str = "none",
    *,
    model: str | Encoder | None = None,
    config: GenerateConfig | None = None,
    fields=None,
    glob: str = "**/*",
    captioner=None,
    device: str | None = None,
    progress: Progress | None = None,
    **writer_options: Any,
) -> GenerateReport:
    """Write training JSONL for the documents of ``inputs`` to ``output`` (see the module's
    docstring). ``writer``: a :class:`QueryWriter`, or ``"none"``, ``"openai"`` or
    ``"hf:PATH"`` with ``writer_options`` for :func:`make_query_writer` (``n=2,
    llm_model=...``). ``model`` chunks, filters (round trip) and mines, as ``index`` and
    ``mine`` do; ``captioner`` (:func:`embedrag.engine.llm.captions.make_captioner`) reads images.
    """
    from embedrag.engine.llm.query_writers import make_query_writer

    if isinstance(writer, str):
        writer = make_query_writer(writer, device=device, **writer_options)
    elif writer_options:
        raise ConfigError("writer options go with a writer name (none, title, openai, hf:PATH), not a QueryWriter")
    from embedrag.engine.data.documents import read_documents
    from embedrag.engine.encoding.encoder import Encoder, resolve_precision
    from embedrag.engine.encoding.models import DEFAULT_MODEL
    from embedrag.engine.mining.mine import write_lines

    config = (config or GenerateConfig()).validate()
    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; give a file name such as train.jsonl")
    started = time.perf_counter()
    documents = list(read_documents(inputs, fields=fields, glob=glob, captioner=captioner))
    if not documents:
        raise DataError([f"{', '.join(map(str, inputs))}: no documents"])
    encoder = model if isinstance(model, Encoder) else Encoder.load(model or DEFAULT_MODEL, device=device)
    config.precision = resolve_precision(config.precision, encoder.device)
    chunks = chunk_documents(documents, encoder, config.chunk_size, config.chunk_overlap)
    if not chunks:
        raise DataError([f"{', '.join(map(str, inputs))}: the documents have no text to write queries for"])
    asked = chunks[: config.max_chunks] if config.max_chunks else chunks
    journal = Journal(journal_path(output, writer))
    report = GenerateReport(output=str(output), journal=str(journal.path), writer=writer.settings(),
                            documents=len(documents), chunks=len(chunks), config=asdict(config))
    report.seconds["read"] = round(time.perf_counter() - started, 3)
    try:
        mark = time.perf_counter()
        write_queries(asked, writer, journal, report, progress)
        report.seconds["write_queries"] = round(time.perf_counter() - mark, 3)
    finally:
        journal.close()
    report.chunks_skipped = dict(Counter(r["skipped"] for c in asked
                                         if (r := journal.results.get(c.key)) and r["skipped"]))
    dropped: Counter = Counter({reason: 0 for reason in DROP_REASONS})
    pairs = filtered_queries(asked, journal, config.max_query_chars, dropped)
    report.queries_written = sum(len(r["queries"]) for c in asked if (r := journal.results.get(c.key)))
    if not pairs:
        raise DataError([f"{output}: no query survived ({report.chunks_failed} chunks failed, "
                         f"dropped {dict(dropped)}, skipped {report.chunks_skipped})"])
    lines = _finish(pairs, chunks, encoder, config, output, dropped, report, progress)
    report.dropped = dict(dropped)
    report.lines = len(lines)
    report.negatives_per_query = round(sum(len(x["neg"]) for x in lines) / len(lines), 3)
    write_lines(lines, output)
    report.seconds["total"] = round(time.perf_counter() - started, 3)
    return report


def _finish(pairs, chunks, encoder, config: GenerateConfig, output: Path, dropped: Counter,
            report: GenerateReport, progress: Progress | None) -> list[dict]:
    """Round trip and mining over every chunk; the output lines."""
    from embedrag.engine.data.corpus import Corpus, normalize_text
    from embedrag.engine.data.examples import Example
    from embedrag.engine.mining.mine import MineConfig, embed_corpus, mine_examples

    mark = time.perf_counter()
    needs_vectors = config.round_trip_k or config.negatives
    corpus = Corpus.from_texts([(c.key, c.text) for c in chunks], str(output))
    # Twice the negatives are mined so that those from the query's own document (its other
    # chunks, likely about the same thing) can be dropped and enough remain.
    mine_config = MineConfig(negatives=max(2 * config.negatives, 1), range_start=config.range_start,
                             range_end=config.range_end, batch_size=config.batch_size,
                             precision=config.precision).validate()
    cache = output.parent / f".{output.name}.generate" / "embeddings"
    vectors = embed_corpus(encoder, corpus, mine_config, cache, progress) if needs_vectors else None
    if config.round_trip_k:
        found = round_trip(pairs, corpus, vectors, encoder, config.round_trip_k, config, progress)
        dropped["round_trip"] += sum(not f for f in found)
        pairs = [p for p, f in zip(pairs, found) if f]
        if not pairs:
            raise DataError([f"{output}: no query found its own chunk in the top {config.round_trip_k}"])
    ids = [f"{chunk.key}:{number}" for number, (chunk, _) in enumerate(pairs)]
    if not config.negatives:
        report.seconds["filter_and_mine"] = round(time.perf_counter() - mark, 3)
        return [{"id": i, "query": q.query, "pos": [q.positive], "neg": []} for i, (_, q) in zip(ids, pairs)]
    # Mined against the whole chunk, so the guards keep the query's own chunk out of its
    # negatives even when its positive is the chunk without the query's sentence.
    examples = [Example(query=q.query, pos=(chunk.text,), id=i) for i, (chunk, q) in zip(ids, pairs)]
    corpus.vectors = vectors
    mined, _ = mine_examples(examples, corpus, encoder, mine_config, progress=progress)
    report.seconds["filter_and_mine"] = round(time.perf_counter() - mark, 3)
    document_of = {normalize_text(c.text): c.document for c in chunks}
    return [{**line, "pos": [q.positive],
             "neg": [n for n in line["neg"] if document_of.get(normalize_text(n)) != chunk.document][:config.negatives]}
            for line, (chunk, q) in zip(mined, pairs)]
