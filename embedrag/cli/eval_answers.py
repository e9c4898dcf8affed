"""``embedrag eval --answers``: answer quality of the RAG loop, model against model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag.cli._common import console, labelled_progress, metric_cells

PANEL = "Answers (--answers)"
Answers = Annotated[Path | None, typer.Option(
    "--answers", help="A JSONL of question + answer (choices, gold, pos optional): score the RAG loop's answers "
    "instead of ranking.", rich_help_panel=PANEL)]
AnswersCorpus = Annotated[Path | None, typer.Option(
    "--corpus", help="Documents to retrieve from (any `index` input; or --beir FOLDER's corpus). "
    "[default: the answers' pos passages]",
    show_default=False, rich_help_panel=PANEL)]
TopK = Annotated[int, typer.Option("--top-k", min=1, help="Passages retrieved per question.", rich_help_panel=PANEL)]
Llm = Annotated[str, typer.Option(help="none (extractive answer), openai or hf:PATH.", rich_help_panel=PANEL)]
LlmBaseUrl = Annotated[str, typer.Option("--llm-base-url", help="OpenAI-compatible server URL.",
                                         rich_help_panel=PANEL)]
LlmModel = Annotated[str | None, typer.Option("--llm-model", help="Model name for --llm openai.",
                                              rich_help_panel=PANEL)]
BertScoreModel = Annotated[str, typer.Option(
    "--bertscore-model", help="Local model for BERTScore, 'auto' (the bundled all-MiniLM-L6-v2) or 'none'.",
    rich_help_panel=PANEL)]
BertScoreLayer = Annotated[int | None, typer.Option(
    "--bertscore-layer", min=1, help="Its layer to compare. [default: the last]", show_default=False,
    rich_help_panel=PANEL)]
Judge = Annotated[str | None, typer.Option(
    "--judge", help="Embedding model judging faithfulness. [default: the bundled all-MiniLM-L6-v2]",
    show_default=False, rich_help_panel=PANEL)]
Threshold = Annotated[float, typer.Option(
    "--faithfulness-threshold", help="Cosine at which a cited passage sentence supports an answer sentence.",
    rich_help_panel=PANEL)]

DEFAULT_METRICS = ("accuracy", "bleu", "rouge1", "rouge2", "rougeL", "bertscore_f1", "faithfulness")


def answers_table(report, metrics: list[str]) -> Table:
    test = report.test_set
    table = Table(title=f"{escape(test['name'])}: {test['queries']} questions "
                        f"({test['multiple_choice']} multiple choice), top {report.k}, answers by {report.generator}",
                  title_justify="left")
    table.add_column("model", style="bold")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("seconds", justify="right")
    for model in report.models:
        table.add_row(escape(model.name), *metric_cells(report, model, metrics), f"{model.seconds:.1f}")
    return table


def run_answers(answers: Path, models: list[str], *, corpus: Path | None, beir: Path | None, db: Path | None,
                table: str, top_k: int,
                llm: str, llm_base_url: str, llm_model: str | None, bertscore_model: str,
                bertscore_layer: int | None, judge: str | None, threshold: float, cache_dir: Path | None,
                cache: bool, precision: str, captioner=None):
    """Load, run and return the :class:`AnswerReport` (the caller renders it)."""
    from embedrag import ModelSpec, evaluate_answers, load_answer_set, make_generator, make_scorers

    answer_set = load_answer_set(answers)
    specs = [ModelSpec.parse(m) for m in models]
    documents = None
    if corpus is not None and beir is not None:
        from embedrag.engine.core.errors import ConfigError

        raise ConfigError("give --corpus or --beir, not both")
    if beir is not None:  # BEIR passages (title + text), as retrieval eval embeds them: its cache applies
        from embedrag import read_beir_corpus

        documents = read_beir_corpus(beir / "corpus.jsonl")
    elif corpus is not None:
        from embedrag import read_documents

        documents = {d.id: d.text for d in read_documents([corpus], captioner=captioner)}
    with console.status("loading the scorers..."):
        scorers = make_scorers(specs, judge=judge, threshold=threshold, bertscore_layer=bertscore_layer,
                               bertscore_model=None if bertscore_model == "none" else bertscore_model)
        generator = make_generator(llm, base_url=llm_base_url, model=llm_model)
    with labelled_progress() as progress:
        return evaluate_answers(answer_set, specs, k=top_k, corpus=documents, db=db, table=table,
                                generator=generator, scorers=scorers, cache_dir=cache_dir, use_cache=cache,
                                precision=precision, progress=progress)


def shown_metrics(report, requested: str | None) -> list[str]:
    names = report.models[0].metrics
    wanted = [m.strip() for m in requested.split(",")] if requested else [*DEFAULT_METRICS, f"hit@{report.k}"]
    return [m for m in wanted if m in names] or list(names)[:6]
