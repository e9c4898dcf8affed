"""``embedrag mine``: hard negatives for training JSONL, with guards against false negatives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag import DEFAULT_MODEL
from embedrag.cli._common import (
    Backend,
    MaxBatchTokens,
    NumProcesses,
    Precision,
    console,
    labelled_progress,
    reports_errors,
)

_SELECT = "Selection"
_SOURCE = "Candidates"
_FAILING = "Hard examples"


@reports_errors
def mine(
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Training JSONL to write (query, pos, neg).", show_default=False)],
    input: Annotated[Path | None, typer.Option(
        "--input", "-i", help="JSONL lines (query + pos, neg optional) to mine negatives for.")] = None,
    beir: Annotated[Path | None, typer.Option(help="A BEIR folder instead: its split's queries and qrels.")] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split, with --beir.")] = "train",
    corpus: Annotated[Path | None, typer.Option(
        help="Where negatives come from: a BEIR folder or corpus.jsonl, a JSONL/text file or folder. "
        "[default: the BEIR corpus, else the input's own passages]", show_default=False,
        rich_help_panel=_SOURCE)] = None,
    db: Annotated[Path | None, typer.Option(
        help="Mine from an indexed LanceDB table instead (its vectors are reused when --model built them).",
        rich_help_panel=_SOURCE)] = None,
    table: Annotated[str, typer.Option(help="Table name, with --db.", rich_help_panel=_SOURCE)] = "docs",
    model: Annotated[str, typer.Option("--model", "-m", help="Model that ranks the candidates.",
                                       rich_help_panel=_SOURCE)] = DEFAULT_MODEL,
    strategy: Annotated[str, typer.Option(
        help="dense (the model), bm25, or hybrid (both, reciprocal-rank fused).", rich_help_panel=_SOURCE)
    ] = "dense",
    negatives: Annotated[int, typer.Option(
        "--negatives", "-n", min=1, help="Negatives to mine per query.", rich_help_panel=_SELECT)] = 7,
    rank_range: Annotated[str, typer.Option(
        "--range", help="START-END: skip the first START results, take candidates up to rank END.",
        rich_help_panel=_SELECT)] = "10-100",
    sampling: Annotated[str, typer.Option(
        help="top: the best-ranked survivors; random: a seeded sample of them.", rich_help_panel=_SELECT)
    ] = "top",
    relative_margin: Annotated[float, typer.Option(
        "--relative-margin", "--margin", min=0.0, max=1.0,
        help="Drop candidates scoring above this x the weakest positive's score (0 turns it off).",
        rich_help_panel=_SELECT)] = 0.95,
    absolute_margin: Annotated[float | None, typer.Option(
        "--absolute-margin", min=0.0, help="Drop candidates scoring within this of the weakest positive's score.",
        rich_help_panel=_SELECT)] = None,
    score_formula: Annotated[str, typer.Option(
        "--score-formula", help="similarity, or anchor-minus-positive: rank survivors by "
        "sim(query, c) - w * sim(positive, c).", rich_help_panel=_SELECT)] = "similarity",
    positive_weight: Annotated[float, typer.Option(
        "--positive-weight", help="w in anchor-minus-positive.", rich_help_panel=_SELECT)] = 0.5,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Drop the lines' existing negatives instead of keeping them.", rich_help_panel=_SELECT)
    ] = False,
    with_scores: Annotated[bool, typer.Option(
        "--with-scores", help="Also write pos_scores / neg_scores (for distillation).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for --sampling random.")] = 42,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Encoding batch size.")] = 64,
    num_processes: NumProcesses = 1,
    precision: Precision = "auto",
    backend: Backend = "torch",
    max_batch_tokens: MaxBatchTokens = None,
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="Corpus-embedding cache (shared with eval). [default: ~/.cache/embedrag/embeddings]",
        show_default=False)] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached corpus embeddings.")] = True,
    only_failing: Annotated[int | None, typer.Option(
        "--only-failing", min=1, help="Instead of mining: keep only the lines whose positive is not in the "
        "model's top K (second-stage hard examples).", rich_help_panel=_FAILING)] = None,
    candidates: Annotated[str, typer.Option(
        help="With --only-failing: rank each line's own pos + neg (per-query) or the whole corpus (all).",
        rich_help_panel=_FAILING)] = "per-query",
    report: Annotated[Path | None, typer.Option("--report", help="Also write the summary as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")] = False,
) -> None:
    """Mine hard negatives: candidates the model ranks high that are not positives, duplicates,
    the query, or too close to a positive's score."""
    from embedrag import MineConfig, default_cache_dir, parse_range
    from embedrag.engine.core.errors import ConfigError

    start, end = parse_range(rank_range)
    config = MineConfig(negatives=negatives, range_start=start, range_end=end, sampling=sampling,
                        relative_margin=relative_margin or None, absolute_margin=absolute_margin,
                        strategy=strategy, score_formula=score_formula, positive_weight=positive_weight,
                        replace=replace, with_scores=with_scores, seed=seed, batch_size=batch_size,
                        num_processes=num_processes, precision=precision,
                        max_batch_tokens=max_batch_tokens).validate()
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; give a file name such as train.jsonl")
    if output.exists() and not overwrite:
        raise ConfigError(f"--output {output} exists; pass --overwrite to replace it")
    if input is not None and output.exists() and output.resolve() == input.resolve():
        raise ConfigError("--output must not be the --input file")
    if backend != "torch":  # the engine takes a loaded encoder as well as a model name
        from embedrag import Encoder

        with console.status(f"loading {model} ({backend})..."):
            model = Encoder.load(model, backend=backend)
    if only_failing is not None:
        _only_failing(input, output, only_failing, model=model, beir=beir, split=split, candidates=candidates,
                      corpus=corpus, batch_size=batch_size, num_processes=num_processes,
                      precision=precision, max_batch_tokens=max_batch_tokens,
                      cache_dir=(cache_dir or default_cache_dir()) if cache else None, report=report)
        return
    from embedrag import mine as run_mine

    with labelled_progress() as progress:
        result = run_mine(input, output, model=model, beir=beir, split=split, corpus=corpus, db=db, table=table,
                          config=config, cache_dir=(cache_dir or default_cache_dir()) if cache else None,
                          progress=progress)
    console.print(_summary(result))
    if report:
        from embedrag import write_json

        console.print(f"report: {escape(str(write_json(report, result.to_dict())))}")


def _only_failing(input, output, k, *, report, **options) -> None:
    from embedrag import only_failing, write_json

    with labelled_progress() as progress:
        result = only_failing(input, output, k=k, progress=progress, **options)
    summary = Table(show_header=False, title=f"hard examples {escape(result.output or '')}", title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("input", escape(result.input))
    summary.add_row("candidates", result.candidates)
    summary.add_row("accuracy", "  ".join(f"top-{name[3:]} {value:.4f}" for name, value in result.accuracy.items()))
    summary.add_row("kept", f"{result.kept} of {result.lines} lines (positive not in the top {result.k})")
    summary.add_row("time", f"{result.seconds:.1f} s")
    console.print(summary)
    if report:
        console.print(f"report: {escape(str(write_json(report, result.to_dict())))}")


def _summary(result) -> Table:
    summary = Table(show_header=False, title=f"mined {escape(result.output or '')}", title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("input", escape(result.input))
    summary.add_row("corpus", f"{escape(result.corpus)} ({result.corpus_size} passages)")
    summary.add_row("lines written", f"{result.written} of {result.queries}"
                    + (f" ({result.skipped_no_positive} without a positive)" if result.skipped_no_positive else ""))
    summary.add_row("negatives / query", f"{result.negatives_per_query:.2f} mined "
                    f"(histogram: {', '.join(f'{k}: {v}' for k, v in sorted(result.negatives_histogram.items()))})")
    removed = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in result.removed.items() if count)
    summary.add_row("candidates", f"{result.candidates_considered} considered; removed: {removed or 'none'}")
    summary.add_row("time", f"{result.seconds:.1f} s ({result.encode_seconds:.1f} s embedding)")
    return summary
