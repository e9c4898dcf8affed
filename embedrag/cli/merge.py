"""``embedrag merge``: fold a LoRA/QLoRA adapter into its base model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from embedrag.cli._common import console, reports_errors


@reports_errors
def merge(
    lora_adapter_path: Annotated[Path, typer.Option(
        "--lora-adapter-path", "--lora_adapter_path", "--adapter",
        help="The adapter folder (e.g. out/final) or its adapter_model.safetensors.", show_default=False)],
    output_path: Annotated[Path, typer.Option(
        "--output-path", "--output_path", "-o", help="Folder for the standalone model.", show_default=False)],
    base_model_path: Annotated[str | None, typer.Option(
        "--base-model-path", "--base_model_path",
        help="Base model. [default: the one recorded with the adapter]", show_default=False)] = None,
    training_precision: Annotated[str, typer.Option(
        "--training-precision", "--training_precision", help="Weights on disk: fp32, bf16 or fp16 (also float32, bfloat16, float16).",
    )] = "fp32",
    qlora_base: Annotated[str, typer.Option(
        "--qlora-base", help="QLoRA only: merge into the 'dequantized' 4/8-bit base it was trained "
        "against (the merged model is the trained model) or the 'original' full-precision base.",
    )] = "dequantized",
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", help="Compare merged and adapter embeddings on probe texts.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output path.")] = False,
) -> None:
    """Merge a LoRA/QLoRA adapter into its base as a standalone model (same vectors everywhere)."""
    from embedrag import merge as run_merge

    with console.status("merging..."):
        result = run_merge(lora_adapter_path, output_path, base_model=base_model_path,
                           training_precision=training_precision, qlora_base=qlora_base,
                           verify=verify, overwrite=overwrite)
    kind = result.finetune_type + (f" into the {result.qlora_base} base" if result.qlora_base else "")
    console.print(f"merged {kind} adapter {escape(str(lora_adapter_path))} + "
                  f"{escape(result.base_model)} -> [bold]{escape(str(result.output_path))}[/] "
                  f"({result.precision})")
    if result.min_cosine is not None:
        status = {True: "[green]ok[/]", False: "[red]failed[/]", None: "[yellow]reported[/]"}[result.verified]
        console.print(f"verify {status}: {result.probes} probe embeddings, max abs diff "
                      f"{result.max_abs_diff:.2e}, min cosine {result.min_cosine:.6f}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
