"""``embedrag ask``: answer questions from an indexed table, one-shot or as a REPL."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag.cli._common import (
    Backend,
    console,
    err_console,
    loading,
    reports_errors,
)

HELP = ("/k N  passages to retrieve    /hybrid on|off  vector + full-text    /sources  last sources\n"
        "/help  this text    /quit  leave (also Ctrl-D)")


def _sources_table(answer) -> Table:
    table = Table(title="sources", title_justify="left")
    for column in ("#", "score", "document", "title", "source"):
        table.add_column(column, overflow="fold")
    for hit in answer.passages:
        table.add_row(str(hit.rank), f"{hit.score:.4f}", escape(f"{hit.doc_id} (chunk {hit.chunk})"),
                      escape(hit.title[:60]), escape(hit.location()))
    return table


def _show_passages(answer) -> None:
    from embedrag import best_sentence

    for hit in answer.passages:
        text = escape(hit.text)
        sentence = best_sentence(answer.question, hit.text)
        if sentence:
            text = text.replace(escape(sentence), f"[bold yellow]{escape(sentence)}[/]", 1)
        console.print(f"[bold][{hit.rank}][/] [dim]{hit.score:.4f}[/] [bold]{escape(hit.title)}[/]")
        console.print(text, highlight=False)
        console.print()


def _answer(rag, question: str, as_json: bool):
    if as_json:
        answer = rag.ask(question)
        console.print_json(json.dumps(answer.to_dict(), ensure_ascii=False))
        return answer
    streamed = []

    def on_text(piece: str) -> None:
        streamed.append(piece)
        console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)

    answer = rag.ask(question, on_text=on_text)
    if answer.answer is None:
        _show_passages(answer)
    else:
        if streamed:
            console.print()
    console.print(_sources_table(answer))
    return answer


def _history() -> None:
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows
        return
    import atexit

    path = Path(os.environ.get("EMBEDRAG_HISTORY", Path.home() / ".embedrag_history"))

    def private() -> None:
        # Questions can be private: the history is the user's alone, also when an older
        # version or another tool created the file with wider permissions.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)

    def save() -> None:
        try:
            private()
            readline.write_history_file(path)
        except OSError:
            pass

    try:
        private()
        readline.read_history_file(path)
    except OSError:
        return
    atexit.register(save)


def _repl(rag, as_json: bool) -> None:
    from embedrag.engine.core.errors import EmbedragError

    console.print(f"[bold]embedrag ask[/]: {escape(rag.retriever.settings.model)}, top {rag.top_k}"
                  f"{', hybrid' if rag.hybrid else ''}. /help for commands.")
    _history()
    last = None
    while True:
        try:
            line = input("? ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line:
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            if command in ("/quit", "/exit", "/q"):
                return
            if command == "/help":
                console.print(HELP)
            elif command == "/k":
                if argument.strip().isdigit() and int(argument) > 0:
                    rag.top_k = int(argument)
                    console.print(f"top-k = {rag.top_k}")
                else:
                    err_console.print("usage: /k N (a positive number)")
            elif command == "/hybrid":
                rag.hybrid = argument.strip().lower() in ("on", "1", "true", "yes")
                console.print(f"hybrid = {'on' if rag.hybrid else 'off'}")
            elif command == "/sources":
                console.print(_sources_table(last) if last else "no question asked yet")
            else:
                err_console.print(f"unknown command {command}; /help lists them")
            continue
        try:
            last = _answer(rag, line, as_json)
        except EmbedragError as exc:  # the server may come back: keep the session
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        except KeyboardInterrupt:
            console.print("\n[dim]interrupted[/]")


@reports_errors
def ask(
    question: Annotated[str | None, typer.Argument(help="The question; none starts a REPL.")] = None,
    db: Annotated[Path, typer.Option(help="LanceDB folder.")] = Path("embedrag.lancedb"),
    table: Annotated[str, typer.Option(help="Table name.")] = "docs",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Passages to retrieve.")] = 5,
    hybrid: Annotated[bool, typer.Option("--hybrid/--no-hybrid", help="Fuse vector and full-text search (RRF).")
                      ] = False,
    llm: Annotated[str, typer.Option(help="none, openai or hf:PATH.")] = "none",
    llm_base_url: Annotated[str, typer.Option("--llm-base-url", help="OpenAI-compatible server URL.")
                            ] = "https://api.openai.com/v1",
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="Model name for --llm openai.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    model: Annotated[str | None, typer.Option(
        "--model", help="Embedding model (must be the one the table was built with). [default: from the table]",
        show_default=False)] = None,
    backend: Backend = "torch",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Retrieve passages for a question and answer it with an LLM, citing sources."""
    from embedrag import RAG, Retriever, make_generator

    with console.status("loading..."), loading():
        retriever = Retriever(db, table, model=model, light=True, backend=backend)
        generator = make_generator(llm, base_url=llm_base_url, model=llm_model, max_new_tokens=max_new_tokens)
    rag = RAG(retriever, generator, top_k=top_k, hybrid=hybrid)
    if question is None:
        _repl(rag, as_json)
    else:
        _answer(rag, question, as_json)
