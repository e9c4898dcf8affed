"""``embedrag eval``: Top-K retrieval metrics, several models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embedrag import DEFAULT_MODEL
from embedrag.cli import _captions as captions
from embedrag.cli import eval_answers as answers_cli
from embedrag.cli._common import (
    Backend,
    MaxBatchTokens,
    NumProcesses,
    Precision,
    console,
    labelled_progress,
    metric_cells,
    reports_errors,
)

DEFAULT_TABLE = "ndcg@10,recall@10,mrr@10,map@10,precision@10,hit@5,recall@100"
# Over each line's own candidates, hit@K is the Top-K accuracy of the ScienceQA report.
PER_QUERY_TABLE = "hit@1,hit@3,hit@5,mrr@10,ndcg@10"


def _parse_ks(value: str) -> list[int]:
    from embedrag.engine.core.errors import ConfigError

    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"--k must be comma-separated integers, got {value!r}") from exc


def _significance_table(report, metrics: list[str]) -> Table:
    """Each model after the baseline, metric by metric: is the gain more than chance?"""
    from embedrag import DEFAULT_RESAMPLES, DEFAULT_SEED, format_pvalue

    baseline = report.models[0]
    table = Table(title=f"vs {escape(baseline.name)}, paired over {len(baseline.per_query)} queries "
                        f"(randomization test: {DEFAULT_RESAMPLES:,} sign flips, seed {DEFAULT_SEED}; t-test)",
                  title_justify="left")
    for column in ("model", "metric", "gain", "p (perm.)", "p (t)", "wins/ties/losses"):
        table.add_column(column, justify="left" if column in ("model", "metric") else "right")
    for model in report.models[1:]:
        for metric in metrics:
            c = report.comparison(model, metric)
            colour = "green" if c.gain > 0 else "red" if c.gain < 0 else "dim"
            p = format_pvalue(c.p_permutation)
            table.add_row(escape(model.name), metric, f"[{colour}]{c.gain:+.4f}[/]",
                          f"[bold]{p}[/]" if c.significant else p, format_pvalue(c.p_ttest),
                          f"{c.wins}/{c.ties}/{c.losses}")
    return table


def _table(report, metrics: list[str]) -> Table:
    table = Table(title=f"{escape(report.test_set['name'])}: {report.test_set['queries']} queries, "
                        f"{report.test_set['corpus']} passages ({report.candidates})", title_justify="left")
    table.add_column("model", style="bold")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("passages/s", justify="right")
    for model in report.models:
        speed = ("-" if model.passages_per_second is None and report.candidates == "table"
                 else "cached" if model.corpus_cached else f"{model.passages_per_second:.1f}")
        table.add_row(escape(model.name), *metric_cells(report, model, metrics), speed)
    return table


@reports_errors
def eval_command(
    test_dataset: Annotated[Path | None, typer.Option(
        "--test-dataset", "--test_dataset", help="JSONL test set (query + pos, neg optional).")] = None,
    beir: Annotated[Path | None, typer.Option(help="A BEIR folder instead (corpus.jsonl, queries.jsonl, qrels/).")] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split.")] = "test",
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="NAME=PATH (repeatable; the first is the baseline). PATH: a model folder, "
        "hub id, a training final/ adapter, or 'bm25' (a BM25 baseline over the same corpus). "
        "[default: all-MiniLM-L6-v2]", show_default=False)] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "1,3,5,10,100",
    candidates: Annotated[str, typer.Option(
        help="'all': rank the whole corpus; 'per-query': only each JSONL line's own pos + neg "
        "(hit@1/3/5 = Top-1/3/5 accuracy).")] = "all",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    num_processes: NumProcesses = 1,
    precision: Precision = "auto",
    backend: Backend = "torch",
    max_batch_tokens: MaxBatchTokens = None,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1, help="Override every model's query/passage token limit.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="Corpus-embedding cache. [default: ~/.cache/embedrag/embeddings]",
        show_default=False)] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached corpus embeddings.")] = True,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write a JSON report.")] = None,
    per_query: Annotated[bool, typer.Option("--per-query", help="Per-query metrics in the JSON report.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG bar chart (needs matplotlib).")] = None,
    table_metrics: Annotated[str, typer.Option(
        "--metrics", help="Metrics shown in the table and chart.")] = DEFAULT_TABLE,
    db: Annotated[Path | None, typer.Option(
        help="Rank an indexed LanceDB table (with the model that built it) instead of embedding a corpus.")] = None,
    table: Annotated[str, typer.Option(help="Table name, with --db.")] = "docs",
    hybrid: Annotated[bool, typer.Option("--hybrid/--no-hybrid", help="With --db: vector + full-text search.")
                      ] = False,
    answers: answers_cli.Answers = None,
    corpus: answers_cli.AnswersCorpus = None,
    top_k: answers_cli.TopK = 5,
    llm: answers_cli.Llm = "none",
    llm_base_url: answers_cli.LlmBaseUrl = "https://api.openai.com/v1",
    llm_model: answers_cli.LlmModel = None,
    bertscore_model: answers_cli.BertScoreModel = "auto",
    bertscore_layer: answers_cli.BertScoreLayer = None,
    judge: answers_cli.Judge = None,
    faithfulness_threshold: answers_cli.Threshold = 0.75,
    caption_model: captions.CaptionModel = None,
    caption_llm: captions.CaptionLlm = None,
    caption_llm_model: captions.CaptionLlmModel = None,
    caption_llm_base_url: captions.CaptionLlmBaseUrl = None,
    caption_cache: captions.CaptionCache = None,
) -> None:
    """Evaluate Top-K retrieval (Hit, Recall, Precision, MRR, nDCG and MAP @K, as trec_eval does),
    or with --answers the answers of the RAG loop (accuracy, BLEU, ROUGE, BERTScore, faithfulness)."""
    from embedrag import check_ks
    from embedrag.engine.core.errors import ConfigError

    if answers is not None:
        report = answers_cli.run_answers(
            answers, model or [DEFAULT_MODEL], corpus=corpus, beir=beir, db=db, table=table, top_k=top_k, llm=llm,
            llm_base_url=llm_base_url, llm_model=llm_model, bertscore_model=bertscore_model,
            bertscore_layer=bertscore_layer, judge=judge, threshold=faithfulness_threshold, cache_dir=cache_dir,
            cache=cache, precision=precision, captioner=captions.captioner(
                caption_model, caption_llm, caption_llm_model, caption_llm_base_url, caption_cache))
        shown = answers_cli.shown_metrics(report, None if table_metrics == DEFAULT_TABLE else table_metrics)
        _finish(report, shown, output, per_query, plot, answers_cli.answers_table)
        return
    ks = check_ks(_parse_ks(k))
    if (test_dataset is None) == (beir is None):
        raise ConfigError("pass exactly one of --test-dataset FILE or --beir FOLDER")
    from embedrag import evaluate, load_beir_testset, load_jsonl_testset

    with console.status("reading the test set..."):
        test_set = load_jsonl_testset(test_dataset) if test_dataset else load_beir_testset(beir, split)
    if table_metrics == DEFAULT_TABLE and candidates == "per-query":
        table_metrics = PER_QUERY_TABLE
    shown = [m.strip() for m in table_metrics.split(",") if m.strip()]
    known = {f"{name}@{cut}" for name in ("ndcg", "recall", "precision", "map", "mrr", "hit") for cut in ks}
    shown = [m for m in shown if m in known] or [f"ndcg@{ks[-1] if 10 not in ks else 10}"]
    if db is not None:
        from embedrag import evaluate_table

        if model and len(model) > 1:
            raise ConfigError("--db evaluates the table's own model: pass at most one --model")
        spec = model[0].split("=", 1)[-1] if model else None
        with console.status(f"searching {table}..."):
            report = evaluate_table(test_set, db, table, ks=ks, model=spec, hybrid=hybrid, backend=backend)
        _finish(report, shown, output, per_query, plot)
        return
    with labelled_progress() as progress:
        report = evaluate(test_set, model or [DEFAULT_MODEL], ks=ks, batch_size=batch_size,
                          cache_dir=cache_dir, use_cache=cache, candidates=candidates,
                          max_length=max_length, progress=progress,
                          num_processes=num_processes, precision=precision, max_batch_tokens=max_batch_tokens,
                          backend=backend)
    _finish(report, shown, output, per_query, plot)


def _finish(report, shown: list[str], output: Path | None, per_query: bool, plot: Path | None,
            render=None) -> None:
    from embedrag import plot_report

    console.print((render or _table)(report, shown))
    if len(report.models) > 1:
        console.print(_significance_table(report, shown))
        console.print("[dim]* p < 0.05 in the paired randomization (permutation) test[/]")
    console.print(f"[dim]{report.seconds:.1f} s[/]")
    if output:
        console.print(f"report: {escape(str(report.save(output, per_query=per_query)))}")
    if plot:
        console.print(f"chart: {escape(str(plot_report(report, shown, plot)))}")
