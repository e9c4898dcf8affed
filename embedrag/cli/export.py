"""``embedrag export``: a model as ONNX or OpenVINO files (optionally int8) for fast CPU encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from embedrag.cli._common import console, reports_errors


@reports_errors
def export(
    model: Annotated[str, typer.Argument(
        help="A model folder (merged, or a full fine-tune's final/), a training final/ adapter (merged on "
        "the fly) or a hub id.", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder to write: the model plus onnx/ or openvino/. An existing export of the "
        "same model gains the new file.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="onnx or openvino.")] = "onnx",
    quantize: Annotated[str, typer.Option(
        "--quantize", help="none, or int8: ONNX Runtime's dynamic int8 (onnx) or NNCF's static int8 "
        "calibrated on --calibration (openvino).")] = "none",
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="Passages that set int8's activation ranges (any `index` input: your corpus or "
        "training passages). [default: built-in probe texts]", show_default=False)] = None,
    calibration_texts: Annotated[int, typer.Option(
        "--calibration-texts", min=1, help="At most this many calibration passages.")] = 300,
    min_cosine: Annotated[float | None, typer.Option(
        "--min-cosine", help="Fail when a probe's cosine to the PyTorch model is below this. "
        "[default: 0.9999, with --quantize int8 0.95]", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")] = False,
) -> None:
    """Export a model to ONNX or OpenVINO (sentence-transformers' backend layout), checked against PyTorch."""
    from embedrag import ExportConfig
    from embedrag import export as run_export

    config = ExportConfig(format=format, quantize=quantize, calibration=calibration,
                          calibration_texts=calibration_texts, min_cosine=min_cosine)
    with console.status("exporting...") as status:
        result = run_export(model, output, config, overwrite=overwrite,
                            step=lambda message: status.update(f"{message}..."))
    console.print(f"exported {escape(model)} -> [bold]{escape(str(result.output / result.file))}[/] "
                  f"({result.format}, {result.quantize}, {result.bytes / 2**20:.1f} MiB, {result.seconds:.1f} s)")
    console.print(f"check [green]ok[/]: {result.probes} probe embeddings, min cosine {result.min_cosine:.6f}, "
                  f"mean {result.mean_cosine:.6f}")
    backend = f"{result.format}:{result.file}" if result.quantize != "none" else result.format
    console.print(f"[dim]use it: --model {escape(str(result.output))} --backend {backend}[/]")
