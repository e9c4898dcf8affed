"""Options for reading images as documents (captions), shared by the commands that read them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PANEL = "Images (captions)"
CaptionModel = Annotated[str | None, typer.Option(
    "--caption-model", help="Caption images with a local image-to-text model: hf:PATH (BLIP, LLaVA, ...).",
    rich_help_panel=PANEL)]
CaptionLlm = Annotated[str | None, typer.Option(
    "--caption-llm", help="Caption images with an OpenAI-compatible vision endpoint: openai.", rich_help_panel=PANEL)]
CaptionLlmModel = Annotated[str | None, typer.Option(
    "--caption-llm-model", help="The vision model's name, with --caption-llm.", rich_help_panel=PANEL)]
CaptionLlmBaseUrl = Annotated[str | None, typer.Option(
    "--caption-llm-base-url", help="Its server URL. [default: https://api.openai.com/v1]", show_default=False,
    rich_help_panel=PANEL)]
CaptionCache = Annotated[Path | None, typer.Option(
    "--caption-cache", help="Caption cache folder. [default: ~/.cache/embedrag/captions]", show_default=False,
    rich_help_panel=PANEL)]


def captioner(model: str | None, llm: str | None, llm_model: str | None, base_url: str | None,
              cache: Path | None):
    """The engine's captioner for these options (None without a caption model)."""
    from embedrag import make_captioner

    return make_captioner(model, llm, llm_model=llm_model, base_url=base_url, cache_dir=cache)
