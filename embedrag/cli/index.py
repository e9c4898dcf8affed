"""``embedrag index``: chunk and embed documents into a LanceDB table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from embedrag import DEFAULT_MODEL
from embedrag.cli import _captions as captions
from embedrag.cli._common import (
    Backend,
    MaxBatchTokens,
    NumProcesses,
    Precision,
    console,
    reports_errors,
)


@reports_errors
def index(
    input: Annotated[list[Path], typer.Option(
        "--input", "-i", help=".jsonl, .txt, .md, .pdf, .html, .docx files or folders of them (repeatable; "
        "PDF, HTML and DOCX need the documents extra).", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Embedding model (folder, hub id, merged model).")
                     ] = DEFAULT_MODEL,
    db: Annotated[Path, typer.Option(help="LanceDB folder.")] = Path("embedrag.lancedb"),
    table: Annotated[str, typer.Option(help="Table name.")] = "docs",
    mode: Annotated[str, typer.Option(help="create, append, overwrite or upsert (by document id).")] = "create",
    text_field: Annotated[str, typer.Option("--text-field", help="JSONL field with the text.")] = "text",
    id_field: Annotated[str | None, typer.Option(
        "--id-field", help="JSONL field with the document id. [default: _id or id]", show_default=False)] = None,
    title_field: Annotated[str, typer.Option("--title-field", help="JSONL field with the title.")] = "title",
    glob: Annotated[str, typer.Option(help="Files to take from folders.")] = "**/*",
    chunk_size: Annotated[int | None, typer.Option(
        "--chunk-size", help="Tokens per chunk; 0: one row per document, the model reading its first passage-length tokens. [default: the model's passage length]", show_default=False)] = None,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", help="Tokens repeated between chunks.")] = 32,
    ann: Annotated[str, typer.Option(help="Vector index: auto (IVF_HNSW_SQ from 50k rows), none, ivf_pq, "
                                          "ivf_hnsw_sq.")] = "auto",
    fts: Annotated[bool, typer.Option("--fts/--no-fts", help="Full-text index for hybrid search.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Encoding batch size.")] = 64,
    num_processes: NumProcesses = 1,
    precision: Precision = "auto",
    backend: Backend = "torch",
    max_batch_tokens: MaxBatchTokens = None,
    caption_model: captions.CaptionModel = None,
    caption_llm: captions.CaptionLlm = None,
    caption_llm_model: captions.CaptionLlmModel = None,
    caption_llm_base_url: captions.CaptionLlmBaseUrl = None,
    caption_cache: captions.CaptionCache = None,
) -> None:
    """Chunk documents with the model's tokenizer, embed them and store them in LanceDB."""
    from embedrag import Encoder, JsonlFields, build_index, read_documents

    with console.status("reading documents..."):
        captioner = captions.captioner(caption_model, caption_llm, caption_llm_model, caption_llm_base_url,
                                       caption_cache)
        documents = list(read_documents(input, fields=JsonlFields(text=text_field, id=id_field,
                                                                  title=title_field), glob=glob,
                                        captioner=captioner))
    if not documents:
        from embedrag.engine.core.errors import DataError

        raise DataError([f"{', '.join(map(str, input))}: no documents"])
    with console.status(f"loading {model}..."):
        encoder = Encoder.load(model, backend=backend)
    with Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("docs  {task.fields[chunks]} chunks  {task.fields[speed]}"),
                  TimeRemainingColumn(), console=console) as bars:
        task = bars.add_task("index", total=len(documents), chunks=0, speed="")

        def progress(done_documents: int, done_chunks: int) -> None:
            elapsed = bars.tasks[task].elapsed or 1e-9
            bars.update(task, completed=done_documents, chunks=done_chunks,
                        speed=f"{done_chunks / elapsed:.1f} chunks/s")

        stats = build_index(documents, encoder, db=db, table=table, mode=mode, chunk_size=chunk_size,
                            chunk_overlap=chunk_overlap, ann=ann, fts=fts, encode_batch_size=batch_size,
                            num_processes=num_processes, precision=precision, max_batch_tokens=max_batch_tokens,
                            progress=progress)
    summary = Table(show_header=False, title=f"{escape(str(db))} :: {escape(table)}", title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("documents / chunks", f"{stats.documents} / {stats.chunks} ({stats.mode})")
    if stats.replaced_documents:
        summary.add_row("replaced documents", str(stats.replaced_documents))
    summary.add_row("rows in table", str(stats.rows))
    summary.add_row("time", f"{stats.seconds:.1f} s, {stats.chunks_per_second:.1f} chunks/s")
    summary.add_row("size on disk", f"{stats.bytes_on_disk / 2**20:.1f} MiB")
    summary.add_row("indexes", ", ".join(filter(None, [stats.ann_index, "FTS" if stats.fts_index else None]))
                    or "none (exact search)")
    console.print(summary)
