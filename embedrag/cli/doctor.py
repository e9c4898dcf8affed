"""``embedrag doctor``: what this machine can do."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag.cli._common import console, reports_errors

_STYLE = {"ok": "green", "warn": "yellow", "missing": "red"}


@reports_errors
def doctor(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Also check that this model resolves offline (repeatable).")] = None,
) -> None:
    """Report torch, devices, bitsandbytes, accelerate, lancedb and the models found offline."""
    from embedrag import DEFAULT_MODEL, diagnose

    with console.status("checking..."):
        checks = diagnose([DEFAULT_MODEL, *(model or [])])
    table = Table(show_header=True, header_style="bold")
    table.add_column("area")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for check in checks:
        style = _STYLE.get(check.status, "white")
        table.add_row(check.area, f"[{style}]{check.status}[/]", escape(check.detail))
    console.print(table)
    if any(c.status == "missing" for c in checks):
        raise typer.Exit(1)
