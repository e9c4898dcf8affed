"""What every command shares: the consoles, the one-line error path, debug mode."""

from __future__ import annotations

import functools
import logging
import os
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from embedrag.engine.errors import EmbedragError

console = Console()
err_console = Console(stderr=True)


class _State:
    debug: bool = os.environ.get("EMBEDRAG_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


state = _State()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line on stderr and leave with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def reports_errors(command):
    """Turn domain errors into one line and an exit code; anything unexpected too,
    unless ``--debug`` / ``EMBEDRAG_DEBUG=1`` asks for the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except EmbedragError as exc:
            if state.debug:
                raise
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            if state.debug:
                raise
            fail("interrupted", 130)
        except MemoryError:
            if state.debug:
                raise
            fail("out of memory: lower --batch-size or the max lengths", 1)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if state.debug:
                raise
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(f"unexpected {type(exc).__name__}: {detail} "
                 "(run with --debug or EMBEDRAG_DEBUG=1 for the traceback)", 1)

    return wrapper


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    root = logging.getLogger("embedrag")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
