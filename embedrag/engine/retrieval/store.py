"""LanceDB tables of embedded chunks: build, upsert, search (vector, full-text, hybrid).

A table remembers in its schema metadata how it was embedded (model, fingerprint,
pooling, normalisation, instructions, dimension, chunking), so searching or appending
with another model is refused instead of returning garbage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.errors import ConfigError, EmbedragError
from embedrag.engine.encoding.models import DEFAULT_MODEL
from embedrag.engine.retrieval.hits import COLUMNS as _COLUMNS
from embedrag.engine.retrieval.hits import Hit, filter_clause, quote_sql
from embedrag.engine.retrieval.hits import hit_from_row as _hit

if TYPE_CHECKING:
    from embedrag.engine.data.documents import Chunker, Document
    from embedrag.engine.encoding.encoder import Encoder
    from embedrag.engine.retrieval.memory import MemoryTable

logger = logging.getLogger(__name__)

MODES = ("create", "append", "overwrite", "upsert")
ANN_KINDS = ("auto", "none", "ivf_pq", "ivf_hnsw_sq")
# Flat (exact) search measured here (benchmarks/bench_ann_threshold.py, 384-d, 2 busy
# cores): p50 19 ms at 10k rows, 81 ms at 50k, 281 ms at 100k; IVF_HNSW_SQ answers in
# 6-13 ms. From 50k rows exact search no longer stays under 100 ms, so "auto" indexes there.
ANN_AUTO_THRESHOLD = 50_000
# IVF_HNSW_SQ query settings (benchmarks/bench_index.py, 100k clustered 384-d rows, 2
# cores; same-run sweeps, quiet / busy): LanceDB's defaults alone recall 0.944@10;
# re-scoring 2k candidates exactly gives 0.996 at p50 6.2 / 17-18 ms, against 1.000 at
# 7.3 / 33-37 ms for 10k and 0.988 at 7.6 / 14 ms for ef 100 without re-scoring.
# Re-scoring also makes the returned scores exact cosines.
ANN_EF: int | None = None  # LanceDB's own
ANN_REFINE_FACTOR = 2
PQ_REFINE_FACTOR = 10  # IVF_PQ's defaults alone recalled 0.41@10 here
METADATA_KEY = b"embedrag"
RRF_K = 60


class TableMismatchError(EmbedragError):
    """The table was built with another model or settings."""


@dataclass
class IndexSettings:
    """What a table records about how its vectors were made."""

    model: str
    fingerprint: str
    pooling: str
    normalize: bool
    query_instruction: str
    passage_instruction: str
    query_max_length: int
    passage_max_length: int
    dimension: int
    chunk_size: int
    chunk_overlap: int
    embedrag_version: str = ""
    precision: str = "fp32"  # of the passage vectors (int8 for a quantized export); queries are fp32
    backend: str = "torch"  # what computed them: torch, or an export (onnx/openvino, with its file)

    @classmethod
    def from_encoder(cls, encoder: Encoder, fingerprint: str, chunk_size: int, chunk_overlap: int,
                     precision: str = "fp32") -> IndexSettings:
        """``precision`` as asked; the settings record what the encoder makes of it."""
        from embedrag._version import __version__

        c = encoder.config
        return cls(model=encoder.name, fingerprint=fingerprint, pooling=c.pooling, normalize=c.normalize,
                   query_instruction=c.query_instruction, passage_instruction=c.passage_instruction,
                   query_max_length=c.query_max_length, passage_max_length=c.passage_max_length,
                   dimension=encoder.dimension, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                   embedrag_version=__version__, precision=encoder.vector_precision(precision),
                   backend=encoder.backend)

    def same_embedding(self, other: IndexSettings) -> bool:
        keys = ("fingerprint", "pooling", "normalize", "query_instruction", "passage_instruction", "dimension")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@dataclass
class IndexStats:
    """What ``index`` did."""

    table: str
    db: str
    mode: str
    documents: int
    chunks: int
    rows: int
    seconds: float
    chunks_per_second: float
    bytes_on_disk: int
    ann_index: str | None
    fts_index: bool
    replaced_documents: int = 0


def _lancedb():
    os.environ.setdefault("LANCEDB_LOG", "error")
    import lancedb

    return lancedb


def _schema(dimension: int, settings: IndexSettings):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("chunk_id", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("chunk", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("title", pa.string()),
            pa.field("source", pa.string()),
            pa.field("metadata", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ],
        metadata={METADATA_KEY: json.dumps(asdict(settings)).encode("utf-8")},
    )


def table_settings(table) -> IndexSettings:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise TableMismatchError("table was not built by embedrag (no embedding metadata)")
    known = {f.name for f in fields(IndexSettings)}
    # Keys a newer embedrag may add are ignored, so its tables still open here.
    return IndexSettings(**{k: v for k, v in json.loads(raw).items() if k in known})


def open_table(db: str | os.PathLike, table: str):
    lancedb = _lancedb()
    if not Path(db).exists():
        raise ConfigError(f"no LanceDB database at {db}")
    if not os.access(db, os.R_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise ConfigError(f"cannot read the LanceDB database at {db} (permission denied)")
    connection = lancedb.connect(str(db))
    if table not in _table_names(connection):
        raise ConfigError(f"table {table!r} not found in {db} (tables: {', '.join(_table_names(connection)) or 'none'})")
    return connection.open_table(table)


def _table_names(connection) -> list[str]:
    lister = getattr(connection, "list_tables", None)
    if lister is not None:
        result = lister()
        names = getattr(result, "tables", result)
        return list(names)
    return list(connection.table_names())


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _rows(documents: Sequence[Document], chunks: Sequence[Sequence[str]], vectors) -> list[dict]:
    rows = []
    position = 0
    for document, pieces in zip(documents, chunks):
        metadata = json.dumps(document.metadata, ensure_ascii=False, default=str)
        for number, text in enumerate(pieces):
            rows.append({"chunk_id": f"{document.id}#{number}", "doc_id": document.id, "chunk": number,
                         "text": text, "title": document.title, "source": document.source,
                         "metadata": metadata, "vector": vectors[position].tolist()})
            position += 1
    return rows


def build_index(
    documents: Iterable[Document],
    encoder: Encoder,
    *,
    db: str | os.PathLike,
    table: str = "docs",
    mode: str = "create",
    chunk_size: int | None = None,
    chunk_overlap: int = 32,
    batch_documents: int = 256,
    encode_batch_size: int = 64,
    ann: str = "auto",
    fts: bool = True,
    num_processes: int = 1,
    precision: str = "fp32",
    max_batch_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IndexStats:
    """Chunk, embed (in ``precision``: fp32, bf16, fp16 or auto; at most ``max_batch_tokens``
    padded tokens a batch, ``None`` for the device's default) and write ``documents``
    into ``db``/``table``. ``chunk_size`` 0 writes one row per document, embedded as the
    model reads it (its first passage-length tokens), as ``evaluate`` embeds a passage.

    ``upsert`` deletes every chunk of each incoming document id before adding the new
    ones, batch by batch, so a re-run (even after an interruption) ends with exactly one
    copy of each document."""
    from embedrag.engine.data.documents import Chunker
    from embedrag.engine.encoding.encoder import resolve_precision
    from embedrag.engine.encoding.fingerprint import model_fingerprint

    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if ann not in ANN_KINDS:
        raise ConfigError(f"--ann must be one of {', '.join(ANN_KINDS)}, got {ann!r}")
    if max_batch_tokens is not None and max_batch_tokens <= 0:
        raise ConfigError(f"--max-batch-tokens must be positive, got {max_batch_tokens}")
    if chunk_size is not None and chunk_size < 0:
        raise ConfigError(f"--chunk-size must be 0 (one row per document) or positive, got {chunk_size}")
    if chunk_size == 0:
        chunker = None
    else:
        chunk_size = chunk_size or max(16, encoder.config.passage_max_length - 2)
        chunker = Chunker(encoder.tokenizer, chunk_size, min(chunk_overlap, chunk_size - 1))
    precision = resolve_precision(precision, encoder.device)
    settings = IndexSettings.from_encoder(encoder, model_fingerprint(encoder), chunk_size,
                                          chunker.chunk_overlap if chunker else 0, precision)
    lancedb = _lancedb()
    new_db = not Path(db).exists()
    Path(db).mkdir(parents=True, exist_ok=True)
    connection = lancedb.connect(str(db))
    exists = table in _table_names(connection)
    if mode == "create" and exists:
        raise ConfigError(f"table {table!r} already exists in {db}: use --mode append, upsert or overwrite")
    previous_version = None
    if exists:
        handle = connection.open_table(table)
        if mode in ("append", "upsert"):
            recorded = table_settings(handle)
            if not recorded.same_embedding(settings):
                raise TableMismatchError(f"table {table!r} was embedded with {recorded.model}, "
                                         f"not {settings.model}")
        previous_version = handle.version
    try:
        if not exists or mode == "overwrite":
            handle = connection.create_table(table, schema=_schema(encoder.dimension, settings), mode="overwrite")
        return _fill_table(handle, documents, encoder, chunker, settings, db=db, table=table, mode=mode,
                           batch_documents=batch_documents, encode_batch_size=encode_batch_size, ann=ann, fts=fts,
                           num_processes=num_processes, max_batch_tokens=max_batch_tokens, progress=progress,
                           precision=precision)
    except BaseException:
        # A failed create leaves no table; a failed append or overwrite the table as it was.
        # upsert keeps what it wrote: re-running it converges on the full set anyway.
        with contextlib.suppress(Exception):
            if not exists:
                connection.drop_table(table)
                if new_db:
                    shutil.rmtree(db, ignore_errors=True)
            elif mode in ("append", "overwrite"):
                connection.open_table(table).restore(previous_version)
        raise


def _fill_table(handle, documents: Iterable[Document], encoder: Encoder, chunker: Chunker | None, settings: IndexSettings, *,
                db, table: str, mode: str, batch_documents: int, encode_batch_size: int, ann: str, fts: bool,
                num_processes: int, max_batch_tokens: int | None,
                progress: Callable[[int, int], None] | None, precision: str) -> IndexStats:
    started = time.perf_counter()
    count_documents = count_chunks = replaced = 0
    seen_ids: set[str] = set()
    batch: list[Document] = []

    def flush() -> None:
        nonlocal count_chunks, replaced
        # No chunker: the whole document is one row, embedded as the model reads it
        # (its first passage-length tokens), the way `eval` embeds a corpus passage.
        pieces = [(chunker.split(d.text) if chunker else []) or [d.text.strip() or d.title or d.id] for d in batch]
        texts = [p for chunks in pieces for p in chunks]
        vectors = (pool if pool is not None else encoder).encode(texts, "passage", batch_size=encode_batch_size,
                                                                 precision=precision,
                                                                 max_batch_tokens=max_batch_tokens)
        if mode == "upsert":
            where = f"doc_id IN ({quote_sql(d.id for d in batch)})"
            existing = handle.search().where(where).select(["doc_id"]).limit(None).to_list()
            replaced += len({row["doc_id"] for row in existing})
            handle.delete(where)
        handle.add(_rows(batch, pieces, vectors))
        count_chunks += len(texts)
        if progress:
            progress(count_documents, count_chunks)

    from embedrag.engine.encoding.parallel import EncoderPool

    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(EncoderPool(encoder, num_processes)) if num_processes > 1 else None
        for document in documents:
            if document.id in seen_ids:
                raise ConfigError(f"duplicate document id {document.id!r} in the input ({document.source}); "
                                  "ids must be unique (--id-field)")
            seen_ids.add(document.id)
            batch.append(document)
            count_documents += 1
            if len(batch) >= batch_documents:
                flush()
                batch = []
        if batch:
            flush()
    rows = handle.count_rows()
    indexed = vector_index_type(handle) is not None
    # One fragment per written batch slows flat search by 15-20% at 100k rows; compaction
    # also adds appended rows to an existing ANN index, which then needs no rebuild.
    handle.optimize()
    ann_built = _maybe_ann(handle, ann, rows) if not (indexed and mode in ("append", "upsert")) else "existing vector index, updated"
    if fts and rows:
        _build_fts(handle)
    seconds = time.perf_counter() - started
    return IndexStats(table=table, db=str(db), mode=mode, documents=count_documents, chunks=count_chunks,
                      rows=rows, seconds=round(seconds, 3),
                      chunks_per_second=count_chunks / max(seconds, 1e-9),
                      bytes_on_disk=_folder_size(Path(db) / f"{table}.lance"), ann_index=ann_built,
                      fts_index=fts and rows > 0, replaced_documents=replaced)


def _maybe_ann(handle, ann: str, rows: int) -> str | None:
    kind = ann
    if ann == "auto":
        kind = "ivf_hnsw_sq" if rows >= ANN_AUTO_THRESHOLD else "none"
    if kind == "none" or rows < 256:  # IVF training needs a few hundred vectors
        return None
    index_type = {"ivf_pq": "IVF_PQ", "ivf_hnsw_sq": "IVF_HNSW_SQ"}[kind]
    try:
        from lancedb.index import HnswSq, IvfPq

        config = HnswSq(distance_type="cosine") if kind == "ivf_hnsw_sq" else IvfPq(distance_type="cosine")
        handle.create_index("vector", config=config, replace=True)
    except ImportError:  # older lancedb
        handle.create_index(metric="cosine", vector_column_name="vector", index_type=index_type, replace=True)
    return index_type


def _build_fts(handle) -> None:
    try:
        from lancedb.index import FTS

        handle.create_index("text", config=FTS(), replace=True)
    except ImportError:  # older lancedb
        handle.create_fts_index("text", replace=True)


def vector_index_type(handle) -> str | None:
    """The table's ANN index on its vectors ("IvfHnswSq", "IvfPq", ...), None when it is
    searched exactly (a full-text index does not count). Ask once per table, not per query."""
    return next((config.index_type for config in handle.list_indices()
                 if "vector" in getattr(config, "columns", ())), None)


def vector_search(handle, vector, k: int, *, index_type: str | None = None, where: str | None = None) -> list[Hit]:
    """Nearest chunks by cosine similarity (score = 1 - cosine distance). ``index_type``
    (from :func:`vector_index_type`) picks the ANN query settings: HNSW search breadth, and
    how many times k candidates to re-score with exact distances (quantised indexes return
    approximate ones; PQ needs a wide re-scoring to recall well). ``where`` filters before
    the search, so k hits come back whenever k chunks match."""
    query = handle.search(vector.tolist() if hasattr(vector, "tolist") else vector)
    query = query.distance_type("cosine").limit(k)
    if where:
        query = query.where(where, prefilter=True)
    if index_type:
        if "Hnsw" in index_type and ANN_EF:
            query = query.ef(ANN_EF)
        query = query.refine_factor(ANN_REFINE_FACTOR if "Hnsw" in index_type else PQ_REFINE_FACTOR)
    rows = query.select([*_COLUMNS, "_distance"]).to_list()
    return [_hit(i + 1, row, 1.0 - float(row["_distance"])) for i, row in enumerate(rows)]


def text_search(handle, text: str, k: int, *, where: str | None = None) -> list[Hit]:
    """BM25 full-text search (needs the table's FTS index)."""
    try:
        query = handle.search(text, query_type="fts").limit(k)
        if where:
            query = query.where(where, prefilter=True)
        rows = query.select([*_COLUMNS]).to_list()
    except Exception as exc:  # noqa: BLE001 - no FTS index, or a query the parser rejects
        logger.warning("full-text search failed (%s); using vector results only", exc)
        return []
    return [_hit(i + 1, row, float(row.get("_score", 0.0))) for i, row in enumerate(rows)]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], k: int, rrf_k: int = RRF_K) -> list[Hit]:
    """Fuse rankings: score = sum of 1 / (rrf_k + rank) over the lists a chunk appears in."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for hit in ranking:
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (rrf_k + hit.rank)
            first.setdefault(hit.chunk_id, hit)
    ordered = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    fused = []
    for rank, chunk_id in enumerate(ordered, start=1):
        hit = first[chunk_id]
        fused.append(Hit(rank=rank, score=scores[chunk_id], chunk_id=hit.chunk_id, doc_id=hit.doc_id,
                         chunk=hit.chunk, text=hit.text, title=hit.title, source=hit.source,
                         metadata=hit.metadata))
    return fused


class Retriever:
    """Searches one table with the model that built it."""

    def __init__(self, db: str | os.PathLike, table: str, *, model: str | None = None,
                 device: str | None = None, light: bool = False, backend: str = "torch"):
        from embedrag.engine.encoding.encoder import Encoder
        from embedrag.engine.encoding.fingerprint import model_fingerprint

        self.table = open_table(db, table)
        self.settings = table_settings(self.table)
        self.index_type = vector_index_type(self.table)
        self.memory: MemoryTable | None = None  # see keep_in_memory
        # The table decides how text is embedded: an index built with other lengths than
        # the model folder's saved ones is searched with those it was built with.
        self.encoder = Encoder.load(model or self.settings.model, device=device,
                                    query_max_length=self.settings.query_max_length,
                                    passage_max_length=self.settings.passage_max_length, light=light,
                                    backend=backend)
        fingerprint = model_fingerprint(self.encoder)
        if fingerprint != self.settings.fingerprint:
            made = f" ({self.settings.backend}, {self.settings.precision})" if self.settings.backend != "torch" \
                or self.encoder.exported else ""
            used = f" with --backend {backend}" if self.encoder.exported or made else ""
            raise TableMismatchError(f"table {table!r} was embedded with {self.settings.model}{made}; "
                                     f"{model or self.settings.model}{used} gives different vectors")

    def keep_in_memory(self, max_rows: int | None = None) -> bool:
        """Hold the table's vectors and rows in memory and search them exactly there
        (:mod:`embedrag.engine.retrieval.memory`), for a table without an ANN index of at
        most ``max_rows`` rows; whether it did. Full-text search stays LanceDB's."""
        from embedrag.engine.retrieval.memory import MAX_MEMORY_ROWS, MemoryTable

        if self.index_type is not None or self.table.count_rows() > (max_rows or MAX_MEMORY_ROWS):
            return False
        self.memory = MemoryTable.load(self.table)
        return True

    def search(self, question: str, k: int = 5, *, hybrid: bool = False,
               filters: dict[str, Any] | None = None) -> list[Hit]:
        return self.search_many([question], k, hybrid=hybrid, filters=filters)[0]

    def search_many(self, questions: Sequence[str], k: int = 5, *, hybrid: bool = False,
                    filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """:meth:`search` for each question, the questions embedded together in batches.
        ``filters`` keep only chunks whose columns match (see :func:`filter_clause`)."""
        if k <= 0:
            raise ConfigError(f"--top-k must be positive, got {k}")
        vectors = self.encoder.encode(list(questions), "query")
        return [self.search_vector(question, vector, k, hybrid=hybrid, filters=filters)
                for question, vector in zip(questions, vectors)]

    def search_vector(self, question: str, vector, k: int, *, hybrid: bool = False,
                      filters: dict[str, Any] | None = None) -> list[Hit]:
        """Hits for a question already embedded (``vector``, by this retriever's encoder);
        ``question`` feeds the full-text half of hybrid search."""
        where = filter_clause(filters)
        depth = k if not hybrid else max(k, 20)
        if self.memory is not None:
            dense = self.memory.search(vector, depth, filters)
        else:
            dense = vector_search(self.table, vector, depth, index_type=self.index_type, where=where)
        if not hybrid:
            return dense[:k]
        return reciprocal_rank_fusion([dense, text_search(self.table, question, max(k, 20), where=where)], k)


def index(inputs: Sequence[str | os.PathLike], model: str = DEFAULT_MODEL,
          *, db: str | os.PathLike = "embedrag.lancedb", table: str = "docs", backend: str = "torch",
          **options) -> IndexStats:
    """Read ``inputs`` (files or folders), embed them with ``model`` and write ``db``/``table``."""
    from embedrag.engine.data.documents import JsonlFields, read_documents
    from embedrag.engine.encoding.encoder import Encoder

    fields = JsonlFields(**{k[:-6]: options.pop(k) for k in ("text_field", "id_field", "title_field")
                            if k in options})
    documents = list(read_documents(inputs, fields=fields, glob=options.pop("glob", "**/*")))
    return build_index(documents, Encoder.load(model, backend=backend), db=db, table=table, **options)
