"""The ``embedrag`` command line: a thin Typer adapter over :mod:`embedrag.engine`.

Each command lives in its own module; heavy libraries are imported inside the command
functions so ``embedrag --help`` stays fast."""

from __future__ import annotations

from typing import Annotated

import typer

from embedrag import __version__
from embedrag.cli import ask as _ask
from embedrag.cli import demo as _demo
from embedrag.cli import doctor as _doctor
from embedrag.cli import eval as _eval
from embedrag.cli import export as _export
from embedrag.cli import generate as _generate
from embedrag.cli import index as _index
from embedrag.cli import merge as _merge
from embedrag.cli import mine as _mine
from embedrag.cli import serve as _serve
from embedrag.cli import train as _train
from embedrag.cli import validate as _validate
from embedrag.cli._common import debug_from_environment, setup_logging, state

app = typer.Typer(
    name="embedrag",
    help="Fine-tune embedding models for retrieval, index documents in LanceDB, "
    "evaluate Top-K retrieval and ask questions over them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"embedrag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also EMBEDRAG_DEBUG=1).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    state.debug = debug or debug_from_environment()
    setup_logging(verbose)


app.command(name="train")(_train.train)
app.command(name="merge")(_merge.merge)
app.command(name="export")(_export.export)
app.command(name="index")(_index.index)
app.command(name="eval")(_eval.eval_command)
app.command(name="ask")(_ask.ask)
app.command(name="mine")(_mine.mine)
app.command(name="generate")(_generate.generate)
app.command(name="serve")(_serve.serve)
app.command(name="validate")(_validate.validate)
app.command(name="doctor")(_doctor.doctor)
app.command(name="demo")(_demo.demo)


def main() -> None:
    app()
