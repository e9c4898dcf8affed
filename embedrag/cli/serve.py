"""``embedrag serve``: the HTTP API and web page over an index (or a model alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from embedrag.cli._common import Backend, console, reports_errors


@reports_errors
def serve(
    db: Annotated[Path | None, typer.Option(help="LanceDB folder to search and ask over; without it only "
                                            "/v1/embeddings answers (give --model).")] = None,
    table: Annotated[str, typer.Option(help="Table name.")] = "docs",
    model: Annotated[str | None, typer.Option(
        help="Embedding model (with --db it must be the one the table was built with). [default: from the table]",
        show_default=False)] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="The model id clients send. [default: the model folder's name]",
        show_default=False)] = None,
    llm: Annotated[str, typer.Option(help="Generator for /v1/ask: none (extractive), openai or hf:PATH.")] = "none",
    llm_base_url: Annotated[str, typer.Option("--llm-base-url", help="OpenAI-compatible server URL.")
                            ] = "https://api.openai.com/v1",
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="Model name for --llm openai.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --api-key or --no-auth.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="EMBEDRAG_API_KEY", show_envvar=True,
        help="Key clients must send as 'Authorization: Bearer KEY' (prefer the variable: a command line is "
             "visible to other users).", show_default=False)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without a key, also off loopback.")] = False,
    report: Annotated[Path | None, typer.Option(help="An `embedrag eval --output` JSON shown at /report.")] = None,
    batching: Annotated[bool, typer.Option("--batching/--no-batching",
                                           help="Embed concurrent requests together.")] = True,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", min=0,
                                                 help="How long a request waits for others to join its batch.")
                             ] = 2.0,
    max_batch_texts: Annotated[int, typer.Option("--max-batch-texts", min=1, help="Texts per batch at most.")] = 256,
    memory_search: Annotated[bool, typer.Option(
        "--memory-search/--no-memory-search", help="Hold a table without an ANN index (up to 200,000 rows) in "
        "memory and search it exactly there, not by a LanceDB scan per query.")] = True,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="Request body limit (MiB).")] = 8.0,
    max_inputs: Annotated[int, typer.Option("--max-inputs", min=1, help="Inputs per embeddings request.")] = 2048,
    max_input_tokens: Annotated[int, typer.Option("--max-input-tokens", min=1, help="Tokens per input.")] = 8192,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps. [default: best available]",
                                               show_default=False)] = None,
    backend: Backend = "torch",
) -> None:
    """Serve an OpenAI-compatible embeddings API, search and ask (streamed) and a web page."""
    from embedrag import BatchingConfig, Limits, ServeConfig
    from embedrag import serve as run_server

    config = ServeConfig(
        db=str(db) if db else None, table=table, model=model, model_name=model_name, llm=llm,
        llm_base_url=llm_base_url, llm_model=llm_model, max_new_tokens=max_new_tokens, host=host, port=port,
        api_key=api_key, no_auth=no_auth, report=str(report) if report else None, device=device, backend=backend,
        memory_search=memory_search, limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_inputs=max_inputs,
                      max_input_tokens=max_input_tokens),
        batching=BatchingConfig(enabled=batching, max_wait_ms=batch_wait_ms, max_texts=max_batch_texts))

    def ready(state, url: str) -> None:
        status.stop()
        where = f"table {config.table!r}" if state.retriever else "embeddings only"
        console.print(f"[bold]embedrag serve[/] {escape(url)}  model {escape(state.model_name)}, {where}, "
                      f"llm {state.generator.name}, auth {'on' if config.auth_required else 'off'}  "
                      f"(Ctrl-C stops)", highlight=False, soft_wrap=True)

    status = console.status("loading...")
    status.start()
    try:
        run_server(config, on_ready=ready, access_log=access_log)
    finally:
        status.stop()
