"""``embedrag generate``: training JSONL from documents, with no labelled queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from embedrag import DEFAULT_MODEL
from embedrag.cli import _captions as captions
from embedrag.cli._common import Precision, console, err_console, reports_errors

_WRITER = "Query writer"
_LLM = "LLM"
_FILTER = "Filters and negatives"


@reports_errors
def generate(
    input: Annotated[list[Path], typer.Option(
        "--input", "-i", help="Documents: .jsonl, .txt, .md, .pdf, .html, .docx files or folders of them "
        "(repeatable).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Training JSONL to write (query, pos, neg).", show_default=False)],
    llm: Annotated[str, typer.Option(
        help="Who writes the queries: none (inverse cloze: a sentence of the chunk is the query, the rest "
        "its positive; no model), title (the document's title is the query of its chunks; no model), openai (an OpenAI-compatible server) or hf:PATH (a local causal LM).",
        rich_help_panel=_WRITER)] = "none",
    questions_per_chunk: Annotated[int, typer.Option(
        "--questions-per-chunk", "-q", min=1, help="Queries to write per chunk.", rich_help_panel=_WRITER)] = 1,
    prompt: Annotated[Path | None, typer.Option(
        help="Prompt template file for an LLM, with {passage} and optionally {n}, {language}, {title}.",
        show_default=False, rich_help_panel=_WRITER)] = None,
    language: Annotated[str, typer.Option(
        help="Language of the queries an LLM writes: auto (Chinese, Japanese or Korean text by its script, "
        "else the passage's own language) or a name such as English.", rich_help_panel=_WRITER)] = "auto",
    max_chunks: Annotated[int | None, typer.Option(
        "--max-chunks", min=1, help="Write queries for the first N chunks only (a trial); negatives still come "
        "from every chunk.", show_default=False, rich_help_panel=_WRITER)] = None,
    llm_model: Annotated[str | None, typer.Option(
        "--llm-model", help="Model name the server knows, with --llm openai.", rich_help_panel=_LLM)] = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", envvar="EMBEDRAG_LLM_BASE_URL", help="OpenAI-compatible server, e.g. "
        "http://127.0.0.1:8000/v1. The key comes from EMBEDRAG_LLM_API_KEY or OPENAI_API_KEY. "
        "[default: https://api.openai.com/v1]", show_default=False, rich_help_panel=_LLM)] = None,
    concurrency: Annotated[int, typer.Option(
        min=1, help="Requests in flight, with --llm openai.", rich_help_panel=_LLM)] = 4,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for one reply before retrying.", rich_help_panel=_LLM)] = 60.0,
    max_retries: Annotated[int, typer.Option(
        "--max-retries", min=0, help="Retries of a request (exponential backoff) on timeouts, connection errors, "
        "429 and 5xx.", rich_help_panel=_LLM)] = 3,
    llm_batch_size: Annotated[int, typer.Option(
        "--llm-batch-size", min=1, help="Chunks per generate call, with --llm hf:PATH.", rich_help_panel=_LLM)] = 8,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Embedding model that chunks (its tokenizer), checks round trips and mines "
        "negatives.", rich_help_panel=_FILTER)] = DEFAULT_MODEL,
    chunk_size: Annotated[int | None, typer.Option(
        "--chunk-size", min=0, help="Tokens per chunk, as index; 0: one chunk per document. [default: the "
        "model's passage length]", show_default=False)] = None,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", min=0, help="Tokens repeated between chunks.")
                             ] = 0,
    max_query_chars: Annotated[int, typer.Option(
        "--max-query-chars", min=1, help="Drop longer queries (and, for inverse cloze, longer sentences).",
        rich_help_panel=_FILTER)] = 300,
    round_trip: Annotated[int, typer.Option(
        "--round-trip", min=0, help="Keep a query only if --model ranks its own chunk in the top K of all "
        "chunks (0: off).", rich_help_panel=_FILTER)] = 0,
    negatives: Annotated[int, typer.Option(
        "--negatives", "-n", min=0, help="Hard negatives to mine per query, with mine's false-negative guards "
        "(0: none).", rich_help_panel=_FILTER)] = 7,
    rank_range: Annotated[str, typer.Option(
        "--range", help="START-END: negatives come from the model's ranks START to END, as mine's.",
        rich_help_panel=_FILTER)] = "10-100",
    precision: Precision = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Encoding batch size.")] = 64,
    glob: Annotated[str, typer.Option(help="Files to take from folders.")] = "**/*",
    text_field: Annotated[str, typer.Option("--text-field", help="JSONL field with the text.")] = "text",
    title_field: Annotated[str, typer.Option("--title-field", help="JSONL field with the title.")] = "title",
    seed: Annotated[int, typer.Option(help="Seed of inverse cloze's sentence choice.")] = 42,
    report: Annotated[Path | None, typer.Option("--report", help="Also write the summary as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")] = False,
    caption_model: captions.CaptionModel = None,
    caption_llm: captions.CaptionLlm = None,
    caption_llm_model: captions.CaptionLlmModel = None,
    caption_llm_base_url: captions.CaptionLlmBaseUrl = None,
    caption_cache: captions.CaptionCache = None,
) -> None:
    """Write training queries for documents (no labelled queries needed), filter them and mine hard
    negatives. Resumable: re-run the same command after an interruption."""
    from embedrag import ConfigError, GenerateConfig, JsonlFields, make_query_writer, parse_range
    from embedrag import generate as run_generate

    if output.exists() and not overwrite:
        raise ConfigError(f"--output {output} exists; pass --overwrite to replace it")
    start, end = parse_range(rank_range)
    config = GenerateConfig(range_start=start, range_end=end, chunk_size=chunk_size, chunk_overlap=chunk_overlap, max_chunks=max_chunks,
                            max_query_chars=max_query_chars, round_trip_k=round_trip, negatives=negatives,
                            precision=precision, batch_size=batch_size).validate()
    with console.status(f"loading {llm}..." if llm != "none" else "preparing..."):
        writer = make_query_writer(llm, n=questions_per_chunk, llm_model=llm_model, base_url=base_url,
                                   prompt_file=prompt, language=language, concurrency=concurrency,
                                   timeout=timeout, max_retries=max_retries, batch_size=llm_batch_size,
                                   max_query_chars=max_query_chars, seed=seed)
        captioner = captions.captioner(caption_model, caption_llm, caption_llm_model, caption_llm_base_url,
                                       caption_cache)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
                  transient=True) as bars:
        result = run_generate(input, output, writer, model=model, config=config,
                              fields=JsonlFields(text=text_field, title=title_field), glob=glob,
                              captioner=captioner, progress=_progress(bars))
    console.print(_summary(result))
    if result.chunks_failed:
        err_console.print(f"[yellow]warning:[/] {result.chunks_failed} chunks failed (first: "
                          f"{escape(result.failures[0])}); re-run the same command to retry them", highlight=False)
    if report:
        from embedrag import write_json

        console.print(f"report: {escape(str(write_json(report, result.to_dict())))}")


def _progress(bars: Progress):
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(escape(stage), total=total, rate="")
        task = tasks[stage]
        elapsed = bars.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:.1f}/s" if elapsed > 0.5 and done else ""
        bars.update(task, completed=done, total=total, rate=rate)

    return progress


def _summary(result) -> Table:
    table = Table(show_header=False, title=f"generated {escape(result.output)}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("documents / chunks", f"{result.documents} / {result.chunks}")
    table.add_row("chunks asked / from the journal",
                  f"{result.chunks_asked} / {result.chunks_from_journal}")
    if result.chunks_skipped:
        table.add_row("chunks without queries", ", ".join(f"{n} {escape(why)}" for why, n in
                                                          result.chunks_skipped.items()))
    if result.chunks_failed:
        table.add_row("chunks failed", str(result.chunks_failed))
    dropped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in result.dropped.items() if n) or "none"
    table.add_row("queries written / dropped", f"{result.queries_written} / {dropped}")
    table.add_row("lines", f"{result.lines} ({result.negatives_per_query:.1f} negatives each)")
    table.add_row("time", f"{result.seconds.get('total', 0):.1f} s")
    table.add_row("journal", escape(result.journal))
    return table
