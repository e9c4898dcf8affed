"""What every command shares: the consoles, the one-line error path, debug mode."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from embedrag.engine.core.errors import EmbedragError, machine_error_message, redact

console = Console()
err_console = Console(stderr=True)

PRECISION_HELP = ("Encoding precision: auto (bf16 where the GPU or CPU computes it natively: 1.6-1.75x fp32's "
                  "speed on an AVX512-BF16 CPU, same nDCG; else fp32), fp32, bf16 or fp16.")
BACKEND_HELP = ("What runs the model: torch, or the folder's `embedrag export` (onnx, openvino; a given file "
                "as onnx:onnx/model_qint8.onnx), on the CPU.")
MAX_BATCH_TOKENS_HELP = ("Cap each encoding batch at this many padded tokens; lower it if long texts run a GPU "
                         "out of memory. [default: on a CPU a cache-sized budget (2,048 tokens for MiniLM), "
                         "on a GPU no cap]")

# How every encoding command encodes: one declaration of each option.
NumProcesses = Annotated[int, typer.Option(
    "--num-processes", min=1, help="Encode in this many worker processes (one per GPU, or CPU processes).")]
Precision = Annotated[str, typer.Option("--precision", help=PRECISION_HELP)]
Backend = Annotated[str, typer.Option("--backend", help=BACKEND_HELP)]
MaxBatchTokens = Annotated[int | None, typer.Option(
    "--max-batch-tokens", min=1, help=MAX_BATCH_TOKENS_HELP, show_default=False)]


@contextlib.contextmanager
def loading():
    """Load libraries and models with the cyclic garbage collector off, then freeze what was
    loaded. Start-up makes ~1M long-lived objects (torch, transformers, lancedb) and no
    garbage cycles: collections during it, and the final one at exit, only traverse them
    (about 1 CPU-second each for ``ask``). Frozen objects are never traversed again;
    later garbage is collected as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def labelled_progress() -> Iterator[Callable[[str, int, int], None]]:
    """Rich bars for the engine's ``progress(label, done, total)`` callbacks: one bar per label."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bars:

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(escape(label), total=total)
            bars.update(tasks[label], completed=done)

        yield progress


def metric_cells(report, model, metrics: list[str]) -> list[str]:
    """A model's row of a report table: each metric, and after the baseline its coloured gain,
    starred when the paired test finds it significant."""
    cells = []
    for metric in metrics:
        value = f"{model.metrics[metric]:.4f}"
        if model is not report.models[0]:
            gain = report.gain(model, metric)
            colour = "green" if gain > 0 else "red" if gain < 0 else "dim"
            mark = "*" if report.comparison(model, metric).significant else ""
            value += f" [{colour}]({gain:+.4f}{mark})[/]"
        cells.append(value)
    return cells


def debug_from_environment() -> bool:
    return os.environ.get("EMBEDRAG_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class _State:
    debug: bool = debug_from_environment()


state = _State()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line on stderr (API keys redacted) and leave with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(redact(message))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _show_traceback(exc: BaseException, code: int) -> NoReturn:
    """--debug: the full traceback, API keys redacted, then the same exit code."""
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    sys.stderr.flush()
    raise typer.Exit(code)


def reports_errors(command):
    """Turn domain errors into one line and an exit code; out-of-memory, GPU and file-system
    failures into one line with a hint; anything unexpected too, unless ``--debug`` /
    ``EMBEDRAG_DEBUG=1`` asks for the traceback."""
    training = command.__name__ == "train"

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except EmbedragError as exc:
            if state.debug:
                _show_traceback(exc, exc.exit_code)
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:
            if state.debug:
                _show_traceback(exc, 130)
            fail("interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if state.debug:
                _show_traceback(exc, 1)
            message = machine_error_message(exc, training=training)
            if message is None:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                message = (f"unexpected {type(exc).__name__}: {detail[:300]} "
                           "(run with --debug or EMBEDRAG_DEBUG=1 for the traceback)")
            fail(message, 1)

    return wrapper


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    root = logging.getLogger("embedrag")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
