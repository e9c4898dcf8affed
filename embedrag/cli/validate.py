"""``embedrag validate``: check training/evaluation JSONL before spending compute on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag.cli._common import console, err_console, reports_errors


@reports_errors
def validate(
    files: Annotated[list[Path], typer.Argument(help="JSONL files of query/pos/neg lines.",
                                                show_default=False)],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Also report token lengths with this model's tokenizer.")] = None,
    query_max_len: Annotated[int | None, typer.Option(
        "--query-max-len", "--query_max_len", min=1,
        help="Query length limit for the truncation count (default: the model's).")] = None,
    passage_max_len: Annotated[int | None, typer.Option(
        "--passage-max-len", "--passage_max_len", min=1,
        help="Passage length limit for the truncation count (default: the model's).")] = None,
    max_errors: Annotated[int, typer.Option(
        "--max-errors", min=1, help="Stop listing problems after this many per file.")] = 50,
) -> None:
    """Check JSONL data against the contract and summarise it.

    Exit 0 when every file is valid, 2 with each problem as FILE:LINE: message."""
    from embedrag import validate_files

    results = validate_files(files, max_problems=max_errors)
    all_examples = [e for _, examples in results for e in examples]
    for report, _ in results:
        _print_report(report)
    problems = sum(len(r.problems) + r.truncated_problems for r, _ in results)
    if model and all_examples:
        from embedrag import token_length_report

        with console.status(f"tokenizing with {model}..."):
            lengths = token_length_report(all_examples, model, query_max_length=query_max_len,
                                          passage_max_length=passage_max_len)
        _print_lengths(lengths)
    if problems:
        err_console.print(f"[bold red]{problems} problem(s)[/] in "
                          f"{sum(1 for r, _ in results if not r.ok)} of {len(results)} file(s)")
        raise typer.Exit(2)
    console.print(f"[bold green]ok[/]: {len(all_examples)} examples in {len(results)} file(s)")


def _print_report(report) -> None:
    if report.problems:
        for problem in report.problems:
            err_console.print(escape(problem), soft_wrap=True, highlight=False)
        if report.truncated_problems:
            err_console.print(f"{escape(report.path)}: ... and {report.truncated_problems} more problem(s)",
                              highlight=False)
    if report.examples == 0:
        return
    table = Table(title=escape(report.path), title_justify="left", show_header=True)
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_row("lines (blank)", f"{report.lines} ({report.blank_lines})")
    table.add_row("valid examples", str(report.examples))
    table.add_row("unique queries", str(report.unique_queries))
    table.add_row("duplicate queries", str(report.duplicate_queries))
    for label, s in (("pos per query", report.pos_per_query), ("neg per query", report.neg_per_query)):
        table.add_row(f"{label} min/mean/max", f"{s.minimum} / {s.mean:.2f} / {s.maximum}")
    table.add_row("lines without neg", str(report.lines_without_neg))
    if report.neg_equal_to_pos:
        table.add_row("[yellow]neg equal to a pos[/]", str(report.neg_equal_to_pos))
    if report.duplicate_negs:
        table.add_row("[yellow]duplicate negs[/]", str(report.duplicate_negs))
    console.print(table)


def _print_lengths(lengths) -> None:
    table = Table(title=f"token lengths ({escape(lengths.model)})", title_justify="left")
    for column in ("", "texts", "p50", "p95", "max", "limit", "truncated"):
        table.add_column(column, justify="right" if column else "left")
    for row in lengths.rows:
        truncated = f"{row.truncated} ({100 * row.truncated / max(row.count, 1):.1f}%)"
        table.add_row(row.kind, str(row.count), str(row.p50), str(row.p95), str(row.maximum),
                      str(row.limit), truncated)
    console.print(table)
