"""``embedrag train``: contrastive fine-tuning (LoRA, QLoRA, full)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from embedrag import DEFAULT_MODEL
from embedrag.cli._common import console, reports_errors

_DATA = "Data"
_MODEL = "Model"
_OPT = "Optimisation"
_LORA = "LoRA / QLoRA"
_EVAL = "Validation"
_SAVE = "Checkpoints and output"


def _rate_or_model(value: str) -> float | None:
    """``--attention-dropout``: a rate, or None for 'model' (keep the model's own)."""
    if value.strip().lower() == "model":
        return None
    from embedrag.engine.core.errors import ConfigError

    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--attention-dropout must be a rate in [0, 1) or 'model', got {value!r}") from None


# Options that are not TrainConfig fields (what to run, not how to train).
RUN_OPTIONS = ("num_processes", "dry_run")


def config_from_options(options: dict[str, Any]):
    """The TrainConfig of the command's options: each option is the field of its name (so a
    field is declared once, here as an option with its help; a test checks the defaults
    agree), ``--train-dataset`` fills ``train_datasets``."""
    from dataclasses import fields

    from embedrag import TrainConfig

    values = {name: value for name, value in options.items() if name not in RUN_OPTIONS}
    values["train_datasets"] = list(values.pop("train_dataset"))
    values["output_dir"] = str(values["output_dir"])
    values["init_from"] = str(values["init_from"]) if values["init_from"] else None
    values["attention_dropout"] = _rate_or_model(values["attention_dropout"])
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    assert not unknown, f"train options without a TrainConfig field: {sorted(unknown)}"
    return TrainConfig(**values).validate()


def _progress_callback():
    from embedrag import TrainCallback

    class RichTrainCallback(TrainCallback):
        """A live bar with epoch, step, loss, lr and throughput; validation lines above it."""

        def __init__(self) -> None:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task = None

        def on_start(self, info: dict[str, Any]) -> None:
            trainable, total = info["trainable_parameters"], info["total_parameters"]
            bits = f" ({info['quantization_bits']}-bit)" if info.get("quantization_bits") else ""
            console.print(
                f"[bold]{info['finetune_type']}{bits}[/] fine-tuning of {escape(info['model'])} on "
                f"{info['device']} x{info['processes']}: {info['examples']} examples, "
                f"{info['total_steps']} steps ({info['steps_per_epoch']}/epoch), "
                f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)")
            if info.get("finetune_choice"):
                console.print(f"[dim]--finetune-type auto: {escape(info['finetune_choice'])}[/]")
            split = info.get("validation_split")
            if split and split.get("queries"):
                console.print(f"validation: {split['queries']} of {split['of_queries']} training queries held "
                              f"out, ranked over {split['pool']:,} passages ({escape(split['pool_source'])})")
            elif split:
                console.print(f"[yellow]{escape(split['skipped_reason'])}[/]")
            self.progress.start()
            self.task = self.progress.add_task("train", total=info["total_steps"],
                                               completed=info["start_step"], epoch="-", loss="-",
                                               lr="-", speed="")

        def on_step(self, log: dict[str, Any]) -> None:
            self.progress.update(self.task, completed=log["step"], epoch=f"{log['epoch']:.2f}",
                                 loss=f"{log['loss']:.4f}", lr=f"{log['lr']:.2e}",
                                 speed=f"{log['samples_per_second']:.1f} samples/s")

        def on_evaluate(self, metrics: dict[str, float]) -> None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step")
            self.progress.console.print(f"step {metrics['step']}: validation {shown}")

        def on_save(self, path: Path) -> None:
            self.progress.console.print(f"[dim]saved {escape(str(path))}[/]")

        def on_end(self, result) -> None:
            self.progress.stop()

    return RichTrainCallback()


def _summary_table(result) -> Table:
    table = Table(title="training summary", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    summary = result.summary
    table.add_row("steps / epochs", f"{result.global_step} / {result.epochs_completed}")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    table.add_row("throughput", f"{summary.get('samples_per_second', 0):.1f} samples/s, "
                                f"{summary.get('tokens_per_second', 0):.0f} tokens/s")
    peak = summary.get("peak_memory_bytes")
    if peak:
        table.add_row("peak memory", f"{peak / 2**20:.0f} MiB ({summary.get('peak_memory_kind')})")
    if summary.get("final_loss") is not None:
        table.add_row("last loss", f"{summary['final_loss']:.4f}")
    base = summary.get("base_metrics") or {}
    for key, value in result.last_metrics.items():
        before = f"  (base {base[key]:.4f})" if key in base else ""
        table.add_row(f"validation {key}", f"{value:.4f}{before}")
    if result.best_dir:
        best = summary.get("best_metric") or {}
        table.add_row("best", f"{best.get('name')} {best.get('value', 0):.4f} at step "
                              f"{best.get('step')} -> {escape(str(result.best_dir))}")
    if result.stopped_early:
        table.add_row("stopped early", "yes")
    final_is = (summary.get("validation") or {}).get("final_model")
    table.add_row("final model", escape(str(result.final_dir)) + (f" ({final_is})" if final_is else ""))
    return table


@reports_errors
def train(
    train_dataset: Annotated[list[str], typer.Option(
        "--train-dataset", "--train_dataset", help="Training JSONL (repeatable; PATH:WEIGHT mixes sets).",
        rich_help_panel=_DATA, show_default=False)],
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "--output_dir", help="Where final/, best/, checkpoints and logs go.",
        rich_help_panel=_DATA, show_default=False)],
    eval_dataset: Annotated[str | None, typer.Option(
        "--eval-dataset", "--eval_dataset", help="Validation JSONL or BEIR folder: loss and "
        "nDCG/Recall/MRR@10 each epoch, best model kept.", rich_help_panel=_DATA)] = None,
    eval_split: Annotated[str, typer.Option(
        "--eval-split", help="qrels split when --eval-dataset is a BEIR folder.", rich_help_panel=_DATA)] = "test",
    auto_validation: Annotated[bool, typer.Option(
        "--auto-validation/--no-auto-validation", help="Without --eval-dataset: hold out 5% of the training "
        "queries (at least 20; none below 100), never train on them, validate at step 0 and every epoch, "
        "keep the best model and end with a base-vs-best verdict.", rich_help_panel=_EVAL)] = True,
    eval_corpus: Annotated[str | None, typer.Option(
        "--eval-corpus", help="Candidate passages for the automatic validation split (BEIR folder, "
        "JSONL, text files). [default: the training files' passages]", rich_help_panel=_EVAL,
        show_default=False)] = None,
    validation_pool_size: Annotated[int, typer.Option(
        "--validation-pool-size", min=1, help="Passages the held-out queries are ranked against (their own "
        "and a seeded sample of the rest).", rich_help_panel=_EVAL)] = 1000,
    final_model: Annotated[str, typer.Option(
        "--final-model", help="With validation, final/ is the 'best' evaluated model or the 'last' one.",
        rich_help_panel=_SAVE)] = "best",
    model: Annotated[str, typer.Option(
        "--model", "--model-name-or-path", "--model_name_or_path", help="Base model folder or hub id.",
        rich_help_panel=_MODEL)] = DEFAULT_MODEL,
    finetune_type: Annotated[str, typer.Option(
        "--finetune-type", "--finetune_type", help="auto, lora, qlora or full. auto: full fine-tuning up to "
        "400M parameters when it fits in half the memory, else lora, else qlora.", rich_help_panel=_MODEL)] = "auto",
    quantization_bits: Annotated[int | None, typer.Option(
        "--quantization-bits", "--quantization_bits", help="QLoRA base precision: 4 (NF4) or 8. [default: 4]",
        rich_help_panel=_MODEL, show_default=False)] = None,
    pooling: Annotated[str, typer.Option(help="auto, cls, mean or last.", rich_help_panel=_MODEL)] = "auto",
    query_instruction: Annotated[str | None, typer.Option(
        "--query-instruction", help="Prefix for every query (saved with the model).",
        rich_help_panel=_MODEL)] = None,
    passage_instruction: Annotated[str | None, typer.Option(
        "--passage-instruction", help="Prefix for every passage (saved with the model).",
        rich_help_panel=_MODEL)] = None,
    query_max_len: Annotated[int, typer.Option(
        "--query-max-len", "--query_max_len", help="Query tokens (capped at the model's limit).",
        rich_help_panel=_MODEL)] = 256,
    passage_max_len: Annotated[int, typer.Option(
        "--passage-max-len", "--passage_max_len", help="Passage tokens (capped at the model's limit).",
        rich_help_panel=_MODEL)] = 1024,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "--batch_size", help="Queries per step and process.", rich_help_panel=_OPT)] = 16,
    mini_batch_size: Annotated[int | None, typer.Option(
        "--mini-batch-size", help="GradCache: embed the batch in chunks of this many texts; memory follows "
        "the chunk, the update equals the full batch's.", rich_help_panel=_OPT)] = None,
    cross_device_negatives: Annotated[bool | None, typer.Option(
        "--cross-device-negatives/--no-cross-device-negatives", help="With several processes, contrast each "
        "query with every process's passages. [default: on with >1 process]", rich_help_panel=_OPT,
        show_default=False)] = None,
    num_processes: Annotated[int, typer.Option(
        "--num-processes", min=1, help="Relaunch through accelerate with this many processes (GPUs, or CPU "
        "processes).", rich_help_panel=_OPT)] = 1,
    gradient_accumulation_steps: Annotated[int, typer.Option(
        "--gradient-accumulation-steps", "--gradient_accumulation_steps",
        help="Micro-batches per optimizer step (adds no negatives).", rich_help_panel=_OPT)] = 1,
    lr: Annotated[float | None, typer.Option(
        "--lr", "--learning-rate", "--learning_rate", help="Peak learning rate. [default: 1e-4 lora/qlora, "
        "2e-5 full]", rich_help_panel=_OPT, show_default=False)] = None,
    epochs: Annotated[int, typer.Option(
        "--epochs", "--num-epochs", "--num_epochs", "--num_train_epochs", help="Passes over the training "
        "data; with validation the best evaluated epoch is kept.", rich_help_panel=_OPT)] = 3,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", "--max_steps", help="Stop after this many optimizer steps (overrides --epochs).",
        rich_help_panel=_OPT)] = None,
    neg_nums: Annotated[int, typer.Option(
        "--neg-nums", "--neg_nums", help="Hard negatives sampled per query and epoch.",
        rich_help_panel=_OPT)] = 2,
    loss: Annotated[str, typer.Option(
        help="infonce; infonce-symmetric: the mean of infonce and its reverse (each positive ranks its query among the batch's queries); or margin-ranking: mean max(0, margin - (sim(q, pos) - sim(q, neg))) over pairs.",
        rich_help_panel=_OPT)] = "infonce",
    temperature: Annotated[float | None, typer.Option(
        help="InfoNCE temperature. [default: the one the model was trained at when known (embedrag's record; "
        "0.05 for all-MiniLM-L6-v2 and other sentence-transformers all-* models), else 0.02]",
        show_default=False, rich_help_panel=_OPT)] = None,
    margin: Annotated[float, typer.Option(help="Margin of --loss margin-ranking.", rich_help_panel=_OPT)] = 0.1,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="Start from an earlier run's final/ (an adapter continues on its base) or a "
        "merged model folder.", rich_help_panel=_OPT)] = None,
    in_batch_negatives: Annotated[bool, typer.Option(
        "--in-batch-negatives/--no-in-batch-negatives",
        help="Contrast each query with the other queries' passages too.", rich_help_panel=_OPT)] = True,
    warmup_proportion: Annotated[float, typer.Option(
        "--warmup-proportion", "--warmup_proportion", rich_help_panel=_OPT)] = 0.05,
    scheduler: Annotated[str, typer.Option(help="linear, cosine or constant.", rich_help_panel=_OPT)] = "linear",
    weight_decay: Annotated[float, typer.Option("--weight-decay", rich_help_panel=_OPT)] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(
        "--max-grad-norm", help="Gradient clipping (0 = off).", rich_help_panel=_OPT)] = 1.0,
    mixed_precision: Annotated[str, typer.Option(
        "--mixed-precision", "--mixed_precision", help="fp32 (or no), fp16 or bf16 (bf16 also on recent CPUs).",
        rich_help_panel=_OPT)] = "fp32",
    attention_dropout: Annotated[str, typer.Option(
        "--attention-dropout", help="Dropout on attention probabilities while training, or 'model' for the "
        "model's own (0.1 for BERT-style models). 0 lets the fused attention kernel run: ~1.5x faster steps "
        "on CPU.", rich_help_panel=_OPT)] = "0",
    gradient_checkpointing: Annotated[bool, typer.Option(
        "--gradient-checkpointing", help="Trade compute for activation memory.", rich_help_panel=_OPT)] = False,
    seed: Annotated[int, typer.Option(rich_help_panel=_OPT)] = 42,
    lora_r: Annotated[int, typer.Option("--lora-r", "--lora_r", rich_help_panel=_LORA)] = 8,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", "--lora_alpha", rich_help_panel=_LORA)] = 32,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", "--lora_dropout", rich_help_panel=_LORA)] = 0.1,
    lora_target_modules: Annotated[str, typer.Option(
        "--lora-target-modules", "--lora_target_modules",
        help="auto/all-linear, or comma-separated module names.", rich_help_panel=_LORA)] = "auto",
    qlora_init: Annotated[str, typer.Option(
        "--qlora-init", help="4-bit QLoRA adapter start: 'gaussian' (peft's default, starts at the 4-bit "
        "base) or 'loftq' (fits the quantisation error, so training starts near the full-precision model).",
        rich_help_panel=_LORA)] = "gaussian",
    eval_steps: Annotated[int | None, typer.Option(
        "--eval-steps", help="Also validate every N steps.", rich_help_panel=_EVAL)] = None,
    eval_on_start: Annotated[bool, typer.Option(
        "--eval-on-start/--no-eval-on-start", help="Validate the untrained model first (the baseline).",
        rich_help_panel=_EVAL)] = True,
    metric_for_best: Annotated[str, typer.Option(
        "--metric-for-best", help="ndcg@10, recall@10, mrr@10 or loss.", rich_help_panel=_EVAL)] = "ndcg@10",
    early_stopping_patience: Annotated[int | None, typer.Option(
        "--early-stopping-patience", help="Stop after N validations without improvement.",
        rich_help_panel=_EVAL)] = None,
    save_on_epoch_end: Annotated[bool, typer.Option(
        "--save-on-epoch-end/--no-save-on-epoch-end", "--save_on_epoch_end/--no_save_on_epoch_end",
        help="Write checkpoint-epoch-N/ after each epoch.", rich_help_panel=_SAVE)] = True,
    save_steps: Annotated[int | None, typer.Option(
        "--save-steps", help="Also write checkpoint-step-N/ every N steps.", rich_help_panel=_SAVE)] = None,
    save_total_limit: Annotated[int | None, typer.Option(
        "--save-total-limit", help="Keep only the newest N checkpoints.", rich_help_panel=_SAVE)] = None,
    resume_from_checkpoint: Annotated[str | None, typer.Option(
        "--resume-from-checkpoint", help="A checkpoint folder, or 'latest' in --output-dir.",
        rich_help_panel=_SAVE)] = None,
    overwrite_output_dir: Annotated[bool, typer.Option(
        "--overwrite-output-dir", help="Write into a non-empty --output-dir.", rich_help_panel=_SAVE)] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the resolved config, trainable parameters and the first batch's "
        "shapes, then exit.")] = False,
) -> None:
    """Fine-tune an embedding model contrastively (InfoNCE or margin ranking, hard and in-batch negatives)."""
    config = config_from_options(locals())

    if num_processes > 1 and not dry_run:
        from embedrag import relaunch

        raise typer.Exit(relaunch(num_processes))
    if dry_run:
        from embedrag import dry_run as run_dry

        with console.status("loading data and model..."):
            report = run_dry(config)
        console.print_json(json.dumps(report.config))
        console.print(f"trainable parameters: {report.trainable_parameters:,} of "
                      f"{report.total_parameters:,} ({100 * report.trainable_parameters / max(report.total_parameters, 1):.2f}%)")
        console.print(f"steps: {report.steps_per_epoch}/epoch, {report.total_steps} in all")
        console.print(f"first batch: queries {report.first_batch['queries']}, passages "
                      f"{report.first_batch['passages']}, {report.first_batch['negatives_per_query']:.1f} "
                      "hard negatives per query")
        return

    from embedrag import is_main_process, release_process_group
    from embedrag import train as run_training

    if not is_main_process():  # one process reports; the others train quietly
        run_training(config)
        release_process_group()
        return
    with console.status("loading data and model..."):
        callback = _progress_callback()
    try:
        result = run_training(config, callback)
    finally:
        callback.progress.stop()  # leave the terminal clean on errors and Ctrl-C too
    release_process_group()
    console.print(_summary_table(result))
    if result.verdict:
        colour = {"better": "green", "not significant": "yellow"}.get(result.verdict["outcome"], "bold red")
        console.print(f"[{colour}]{escape(result.verdict['message'])}[/]")
