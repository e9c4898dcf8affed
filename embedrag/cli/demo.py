"""``embedrag demo``: the whole loop offline on the bundled model and the SciFact slice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag import DEFAULT_MODEL, DEMO_EPOCHS
from embedrag.cli._common import console, reports_errors


@reports_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the run, merged model and LanceDB go.")] = Path("embedrag-demo"),
    finetune_type: Annotated[str, typer.Option(
        "--finetune-type", help="auto, qlora, lora or full (auto: full for all-MiniLM-L6-v2).")] = "auto",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs over the slice's training queries.")] = DEMO_EPOCHS,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to fine-tune.")
                     ] = DEFAULT_MODEL,
    data: Annotated[Path | None, typer.Option(
        help="BEIR folder with train.jsonl and test.jsonl. [default: datasets/scifact-slice]",
        show_default=False)] = None,
) -> None:
    """Evaluate the base model, fine-tune, merge, index, evaluate again and answer a question."""
    from embedrag import METRICS, format_pvalue, run_demo
    from embedrag.cli.train import _progress_callback

    def on_stage(name: str, detail: str) -> None:
        console.rule(f"[bold]{escape(name)}[/] [dim]{escape(detail)}[/]", align="left")

    result = run_demo(workdir, finetune_type=finetune_type, epochs=epochs, data=data, model=model, on_stage=on_stage,
                      train_callback=_progress_callback())
    table = Table(title=f"SciFact slice test: base vs {result.finetune_type} fine-tune", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("gain", justify="right")
    table.add_column("p (perm.)", justify="right")
    table.add_column("wins/ties/losses", justify="right")
    for metric in METRICS:
        gain = result.after[metric] - result.before[metric]
        colour = "green" if gain > 0 else "red" if gain < 0 else "dim"
        c = result.comparisons[metric]
        table.add_row(metric, f"{result.before[metric]:.4f}", f"{result.after[metric]:.4f}",
                      f"[{colour}]{gain:+.4f}[/]", format_pvalue(c.p_permutation), f"{c.wins}/{c.ties}/{c.losses}")
    console.print(table)
    console.print("[dim]p: paired randomization test over the test queries (10,000 sign flips)[/]")
    if result.verdict:
        colour = {"better": "green", "not significant": "yellow"}.get(result.verdict["outcome"], "bold red")
        console.print(f"[{colour}]training's own check: {escape(result.verdict['message'])}[/]")
    console.print(f"[bold]Q:[/] {escape(result.answer.question)}")
    for number, hit in enumerate(result.answer.passages, start=1):
        console.print(f"  [{number}] {hit.score:.3f} {escape(hit.title or hit.doc_id)}: "
                      f"{escape(hit.text[:160])}...")
    paths = Table(show_header=False, title="written", title_justify="left")
    paths.add_column(style="bold")
    paths.add_column()
    for name, path in result.paths.items():
        paths.add_row(name, escape(path))
    console.print(paths)
    console.print("[dim]" + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
                  + f"; total {result.total_seconds:.0f} s[/]")
