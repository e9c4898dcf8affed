"""The training loop: contrastive fine-tuning on accelerate.

``train(TrainConfig(...), callback)`` loads and checks the data (before any model),
loads the model for the fine-tune type, trains with AdamW and a warmup schedule,
validates, checkpoints (exactly resumable) and writes the output layout of DESIGN.md.
Only the main process writes files; progress goes to a :class:`TrainCallback`.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.atomic import write_json
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.examples import Example, load_examples
from embedrag.engine.encoding.precision import accelerate_mixed_precision
from embedrag.engine.training.checkpoints import (
    TrainState,
    find_checkpoint,
    read_state,
    restore_checkpoint,
    rotate_checkpoints,
    write_checkpoint,
)
from embedrag.engine.training.sampling import ContrastiveBatch, EpochSampler
from embedrag.engine.training.train_config import TrainConfig, default_temperature

if TYPE_CHECKING:
    import torch

    from embedrag.engine.encoding.encoder import Encoder

logger = logging.getLogger(__name__)

DETAILED_LOGS = "detailed_training_logs.json"
EPOCH_LOSSES = "training_losses.json"
SUMMARY_REPORT = "training_summary_report.json"


# ---------------------------------------------------------------------- public results
class TrainCallback:
    """Hooks for progress reporting; every method is optional. Called on the main
    process only."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, log: dict[str, Any]) -> None: ...
    def on_evaluate(self, metrics: dict[str, float]) -> None: ...
    def on_save(self, path: Path) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    """Where a run wrote its outputs and how it ended."""

    output_dir: Path
    final_dir: Path
    best_dir: Path | None
    global_step: int
    epochs_completed: int
    best_metric: float | None
    last_metrics: dict[str, float]
    stopped_early: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    # Base vs best on the validation split (``holdout.Verdict.to_dict()``), when validated.
    verdict: dict[str, Any] | None = None


@dataclass
class DryRunReport:
    """What ``--dry-run`` shows: the resolved config, parameters and the first batch."""

    config: dict[str, Any]
    trainable_parameters: int
    total_parameters: int
    steps_per_epoch: int
    total_steps: int
    first_batch: dict[str, Any]


# ---------------------------------------------------------------------- the model wrapper
class _StopRequest:
    """While active, the first Ctrl-C (SIGINT) only asks training to stop after the
    current optimizer step, with a checkpoint; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort now)")

    def __enter__(self) -> _StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _loss(config: TrainConfig):
    """The training loss the config names."""
    from embedrag.engine.training.loss import InfoNCELoss, MarginRankingLoss

    if config.loss == "margin-ranking":
        return MarginRankingLoss(config.margin, config.in_batch_negatives)
    return InfoNCELoss(config.temperature, config.in_batch_negatives)


def _bi_encoder_class():
    import torch

    from embedrag.engine.encoding.encoder import embed_batch

    class BiEncoder(torch.nn.Module):
        """Embeds queries and passages in ONE forward call, so distributed wrappers
        (DDP) see each parameter used once per step."""

        def __init__(self, backbone: torch.nn.Module, pooling: str, normalize: bool):
            super().__init__()
            self.backbone = backbone
            self.pooling = pooling
            self.normalize = normalize

        def forward(self, *batches: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            return tuple(embed_batch(self.backbone, b, self.pooling, self.normalize) for b in batches)

    return BiEncoder


# ---------------------------------------------------------------------- helpers
def _accelerator(mixed_precision: str):
    """An Accelerator for this run. accelerate keeps process-wide state that refuses a
    different precision later; a second run in the same process (a notebook, a test)
    resets it first, keeping the distributed set-up."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    # Several processes without a GPU (torchrun or accelerate launch on CPU): accelerate
    # only sets up gloo when told the run is on CPU.
    import torch

    from embedrag.engine.training.launch import in_distributed_launch

    on_cpu = in_distributed_launch() and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=on_cpu)


def _peak_memory_bytes(device_type: str) -> int:
    """Peak memory since the last :func:`_reset_peak_memory`: CUDA allocations on a GPU,
    else the process's resident-set high-water mark (VmHWM on Linux)."""
    import torch

    if device_type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS; it cannot be reset.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _return_freed_memory_to_the_os() -> None:
    """glibc raises its mmap threshold after large frees, so the weight-sized
    temporaries of CPU training (4-bit dequantisation above all) are then served from
    the heap, which fragments and never shrinks: RSS grows step after step. A fixed 1 MiB
    threshold keeps large blocks in mmap, released on free (measured here: qlora peak
    RSS 3.0 GiB -> 1.7 GiB on a 105M-parameter decoder). Only qlora needs it: every
    activation then costs fresh zeroed pages, which made lora/full CPU steps ~20% slower."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _reset_peak_memory(device_type: str) -> None:
    """Start measuring the training peak from here (after the model is loaded)."""
    import torch

    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the VmHWM high-water mark to the current RSS.
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def validation_set(spec: str, split: str = "test"):
    """The validation examples (for the loss) and test set (for retrieval metrics) of
    ``--eval-dataset``: a JSONL file (passages pooled across its lines) or a BEIR folder
    (its whole corpus, so the metrics see realistic distractors)."""
    from embedrag.engine.data.testsets import load_beir_testset, load_jsonl_testset

    if Path(spec).is_dir():
        test_set = load_beir_testset(spec, split)
        examples = [Example(query=test_set.queries[qid],
                            pos=tuple(test_set.corpus[d] for d, grade in docs.items() if grade > 0))
                    for qid, docs in test_set.qrels.items()]
        return [e for e in examples if e.pos], test_set
    return load_examples(spec), load_jsonl_testset(spec)


def retrieval_metrics(encoder: Encoder, test_set, *, batch_size: int = 64, ks: tuple[int, ...] = (10,),
                      precision: str = "fp32") -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """nDCG/Recall/MRR@k of ``encoder`` on ``test_set`` (exact search, no cache): the means
    and each query's scores."""
    from embedrag.engine.evaluation.evaluate import evaluate_model

    result = evaluate_model(encoder, test_set, name="validation", ks=ks, batch_size=batch_size,
                            precision=precision)

    def kept(scores: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in scores.items() if k.split("@")[0] in ("ndcg", "recall", "mrr")}

    return kept(result.metrics), {q: kept(v) for q, v in result.per_query.items()}


# ---------------------------------------------------------------------- the trainer
class _Trainer:
    """State of one run. Split into small methods; ``train()`` drives it."""

    def __init__(self, config: TrainConfig, callback: TrainCallback | None):
        self.config = config
        self.callback = callback or TrainCallback()
        self.output_dir = Path(config.output_dir)
        self.state = TrainState()  # what a checkpoint saves and a resume restores
        self.last_per_query: dict[str, dict[str, float]] = {}  # the latest evaluation's
        self.holdout: dict[str, Any] | None = None
        self.finetune_choice: str | None = None  # why --finetune-type auto chose what it did
        self.stopped_early = False
        self.seconds_before_resume = 0.0

    # ------------------------------------------------------------ set-up
    def load_data(self) -> None:
        config = self.config
        self.datasets = [(load_examples(spec.path), spec.weight) for spec in config.datasets()]
        self.eval_examples, self.eval_set = [], None
        if config.eval_dataset:
            self.eval_examples, self.eval_set = validation_set(config.eval_dataset, config.eval_split)
        elif config.auto_validation:
            self._hold_out()

    def _hold_out(self) -> None:
        """The automatic validation split: held-out training queries over a candidate pool."""
        from embedrag.engine.training.holdout import holdout_testset, split_holdout

        config = self.config
        everything = [e for examples, _ in self.datasets for e in examples]
        self.datasets, held, info = split_holdout(self.datasets, seed=config.seed)
        if held:
            self.eval_set, info.pool_source = holdout_testset(
                held, everything, seed=config.seed, pool_size=config.validation_pool_size,
                corpus_path=config.eval_corpus)
            self.eval_examples = held
            info.pool = len(self.eval_set.corpus)
            logger.info("validation split: %d of %d training queries held out, ranked over %d passages (%s)",
                        info.queries, info.of_queries, info.pool, info.pool_source)
        else:
            logger.warning("%s", info.skipped_reason)
        self.holdout = info.to_dict()

    def check_output_dir(self) -> None:
        out = self.output_dir
        if self.config.resume_from_checkpoint or self.config.overwrite_output_dir:
            from embedrag.engine.core.atomic import remove_stale_staging
            from embedrag.engine.training.launch import is_main_process

            if is_main_process():
                for path in remove_stale_staging(out):
                    logger.info("removed %s, left by an interrupted run", path)
            return
        if out.exists() and (out.is_file() or any(out.iterdir())):
            raise ConfigError(f"output dir {out} exists and is not empty: pass --overwrite-output-dir "
                              "or --resume-from-checkpoint latest")

    def build(self) -> None:
        import torch
        from accelerate.utils import set_seed

        from embedrag.engine.training.finetune import (
            load_adapter_weights,
            load_training_encoder,
            prepare_for_training,
            resolve_init,
            set_attention_dropout,
        )

        config = self.config
        self.accelerator = _accelerator(accelerate_mixed_precision(config.mixed_precision))
        set_seed(config.seed)
        init = resolve_init(config.init_from, config.model)
        if config.finetune_type == "auto":
            config = self.config = replace(config, finetune_type=self._choose_finetune_type(init))
        if torch.device(self.accelerator.device).type == "cpu" and config.finetune_type == "qlora":
            _return_freed_memory_to_the_os()
        self.encoder = load_training_encoder(
            init.model, config.finetune_type, quantization_bits=config.bits,
            device=str(self.accelerator.device), **self._embedding_settings(init))
        if config.temperature is None:
            declared = self.encoder.config
            temperature = default_temperature(init.model, (declared.extra or {}).get("finetune"),
                                              declared.base_model)
            config = self.config = replace(config, temperature=temperature)
        if Path(init.model).is_dir():
            # The folder trained from is the base an adapter sits on, whatever base that
            # folder itself was once fine-tuned from.
            self.encoder.config.base_model = str(Path(init.model).resolve())
        self.encoder.config.extra = {"finetune": self._finetune_record()}
        lora = config.lora()
        if init.adapter is not None and config.finetune_type != "full":
            lora = init.lora(config.lora_dropout)
        elif init.adapter is not None:
            self._merge_init_adapter(init)
        if config.attention_dropout is not None:
            set_attention_dropout(self.encoder.model, config.attention_dropout)
        # LoftQ only starts a new 4-bit adapter (8-bit's error is small; a continued adapter
        # brings its own weights).
        prepare_for_training(self.encoder, config.finetune_type, lora,
                             gradient_checkpointing=config.gradient_checkpointing,
                             qlora_init=config.qlora_init if config.bits == 4 and init.adapter is None
                             else "gaussian")
        if init.adapter is not None and config.finetune_type != "full":
            load_adapter_weights(self.encoder.model, init.adapter)
        self.module = _bi_encoder_class()(self.encoder.model, self.encoder.config.pooling,
                                          self.encoder.config.normalize)
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.sampler = EpochSampler(self.datasets, batch_size=config.batch_size, neg_nums=config.neg_nums,
                                    seed=config.seed, world_size=self.accelerator.num_processes,
                                    rank=self.accelerator.process_index)
        self.micro_steps_per_epoch = self.sampler.steps_per_epoch()
        if self.micro_steps_per_epoch == 0:
            raise ConfigError(f"not enough training examples for one batch of {config.batch_size} "
                              f"x {self.accelerator.num_processes} process(es)")
        accumulation = config.gradient_accumulation_steps
        self.updates_per_epoch = math.ceil(self.micro_steps_per_epoch / accumulation)
        self.total_updates = config.max_steps or config.epochs * self.updates_per_epoch
        self.num_epochs = math.ceil(self.total_updates / self.updates_per_epoch)
        self.scheduler = self._scheduler()
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        self.loss_fn = _loss(config)
        from embedrag.engine.training.contrastive import ContrastiveStep

        world = self.accelerator.num_processes
        self.contrastive_step = ContrastiveStep(
            self.module, self.encoder, self.loss_fn, backward=self.accelerator.backward,
            no_sync=lambda: self.accelerator.no_sync(self.module), mini_batch_size=config.mini_batch_size,
            cross_device=world > 1 and config.cross_device_negatives is not False, world_size=world,
            device=self.accelerator.device,
            # Not for 4-bit/8-bit weights: every extra forward call raised the qlora peak
            # (105M decoder, CPU: 1,660 -> 2,092 MiB), which is what qlora is chosen to save.
            passage_group_size=None if config.finetune_type == "qlora" else config.batch_size)
        self.device_type = torch.device(self.accelerator.device).type
        self.load_peak_memory = _peak_memory_bytes(self.device_type)
        _reset_peak_memory(self.device_type)

    def _choose_finetune_type(self, init) -> str:
        """``--finetune-type auto``: an adapter run continues as the adapter was trained;
        otherwise by model size and device memory (finetune.choose_finetune_type)."""
        from embedrag.engine.encoding.encoder import read_embedding_config
        from embedrag.engine.encoding.models import resolve_model
        from embedrag.engine.training.finetune import (
            checkpoint_parameters,
            choose_finetune_type,
            device_memory_bytes,
        )

        if init.adapter is not None:
            saved = read_embedding_config(init.adapter)
            chosen = ((saved.extra or {}).get("finetune", {}).get("type") if saved else None) or "lora"
            self.finetune_choice = f"continuing {init.adapter} ({chosen})"
            return chosen
        parameters = checkpoint_parameters(resolve_model(init.model).path)
        chosen, self.finetune_choice = choose_finetune_type(parameters, device_memory_bytes(str(self.accelerator.device)))
        logger.info("--finetune-type auto: %s (%s)", chosen, self.finetune_choice)
        return chosen

    def _embedding_settings(self, init) -> dict[str, Any]:
        """The run's embedding settings; options left unset follow the adapter started from."""
        from embedrag.engine.encoding.encoder import read_embedding_config

        config = self.config
        saved = read_embedding_config(init.adapter) if init.adapter is not None else None
        pooling = config.pooling
        query_instruction, passage_instruction = config.query_instruction, config.passage_instruction
        if saved is not None:
            pooling = saved.pooling if pooling == "auto" else pooling
            query_instruction = saved.query_instruction if query_instruction is None else query_instruction
            passage_instruction = saved.passage_instruction if passage_instruction is None else passage_instruction
        return {"pooling": pooling, "query_instruction": query_instruction,
                "passage_instruction": passage_instruction, "query_max_length": config.query_max_len,
                "passage_max_length": config.passage_max_len}

    def _merge_init_adapter(self, init) -> None:
        """Full fine-tuning from a LoRA adapter: fold it into the base first. A QLoRA
        adapter belongs on the dequantized base, which ``embedrag merge`` builds."""
        from embedrag.engine.encoding.adapter_loading import merge_adapter
        from embedrag.engine.encoding.encoder import read_embedding_config

        saved = read_embedding_config(init.adapter)
        if saved is not None and (saved.extra or {}).get("finetune", {}).get("type") == "qlora":
            raise ConfigError(f"--init-from {init.adapter}: merge a QLoRA adapter first (embedrag merge), "
                              "then pass the merged folder")
        self.encoder.model = merge_adapter(self.encoder.model, init.adapter, init.model)

    def _finetune_record(self) -> dict[str, Any]:
        config = self.config
        record: dict[str, Any] = {"type": config.finetune_type, "base_model": None,
                                  "quantization_bits": config.bits, "loss": config.loss,
                                  "temperature": config.temperature, "train_datasets": config.train_datasets}
        if config.attention_dropout is not None:
            record["attention_dropout"] = config.attention_dropout
        if config.loss == "margin-ranking":
            record["margin"] = config.margin
        if config.init_from:
            record["init_from"] = str(config.init_from)
        if config.finetune_type != "full":
            record.update(lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout)
        return record

    def _scheduler(self):
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(self.config.scheduler, self.config.scheduler)
        warmup = int(round(self.config.warmup_proportion * self.total_updates))
        return get_scheduler(name, self.optimizer, num_warmup_steps=warmup,
                             num_training_steps=self.total_updates)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------ one step
    def _forward_loss(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, int]:
        encoder = self.encoder
        queries = encoder.pad(encoder.tokenize(batch.queries, "query")["input_ids"])
        passages = encoder.pad(encoder.tokenize(batch.passages, "passage")["input_ids"])
        query_vectors, passage_vectors = self.module(queries, passages)
        loss = self.loss_fn(query_vectors, passage_vectors, **batch.loss_inputs(self.accelerator.device))
        tokens = int(queries["attention_mask"].sum() + passages["attention_mask"].sum())
        return loss, tokens

    def _clip(self) -> float:
        import torch

        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        if self.accelerator.num_processes > 1 or accelerate_mixed_precision(self.config.mixed_precision) == "fp16":
            norm = self.accelerator.clip_grad_norm_(self.parameters, limit)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, limit)
        return float(norm)

    # ------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        config = self.config
        accumulation = config.gradient_accumulation_steps
        start = time.perf_counter()
        self.run_start = start
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.writer = self._tensorboard()
            self.started = self.start_info()
            self.callback.on_start(self.started)
        if self.eval_examples and self.config.eval_on_start and self.state.global_step == 0:
            self.state.base_metrics = self.evaluate()
            self.state.base_per_query = self.last_per_query
            if self.is_main:
                if self.writer is not None:
                    for key, value in self.state.base_metrics.items():
                        self.writer.add_scalar(f"eval/{key}", value, 0)
                self.callback.on_evaluate({**self.state.base_metrics, "step": 0})
        with _StopRequest() as stop:
            self._loop(stop, accumulation)
        if self.eval_examples and self.state.last_eval_step != self.state.global_step:
            self._maybe_evaluate(epoch_end=True)  # the model that training ended with is judged too
        seconds = self.seconds_before_resume + time.perf_counter() - start
        return self._finish(seconds)

    def _loop(self, stop: _StopRequest, accumulation: int) -> None:
        window_loss = 0.0
        window_micro = 0
        while self.state.epoch < self.num_epochs and not self._done():
            for batch in self.sampler.batches(self.state.epoch, self.state.micro_step):
                micro_in_epoch = self.state.micro_step
                last_of_epoch = micro_in_epoch + 1 == self.micro_steps_per_epoch
                window_size = min(accumulation, self.micro_steps_per_epoch
                                  - (micro_in_epoch // accumulation) * accumulation)
                is_update = (micro_in_epoch + 1) % accumulation == 0 or last_of_epoch
                sync = nullcontext() if is_update else self.accelerator.no_sync(self.module)
                with sync:
                    step = self.contrastive_step(batch, 1.0 / window_size)
                loss, tokens = step.loss, step.tokens
                window_loss += loss
                window_micro += 1
                self.state.samples_seen += len(batch) * self.accelerator.num_processes
                self.state.tokens_seen += tokens * self.accelerator.num_processes
                self.state.micro_step += 1
                if not is_update:
                    continue
                grad_norm = self._clip()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.global_step += 1
                step_loss = self._mean_across_processes(window_loss / window_micro)
                self.state.epoch_loss_sum += step_loss
                self.state.epoch_loss_count += 1
                window_loss, window_micro = 0.0, 0
                self._log_step(step_loss, grad_norm)
                if last_of_epoch:
                    self._end_epoch()
                self._maybe_evaluate(epoch_end=last_of_epoch)
                saved = self._maybe_checkpoint(epoch_end=last_of_epoch)
                if self._stop_requested(stop) and not self._done():
                    self._stop(saved)
                if self._done():
                    break

    def _stop_requested(self, stop: _StopRequest) -> bool:
        """Ctrl-C in any process stops them all at the same step."""
        if self.accelerator.num_processes == 1:
            return stop.requested
        import torch

        flag = torch.tensor([int(stop.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def _stop(self, saved: Path | None) -> None:
        """Save where the run stands (unless this step was just saved) and leave."""
        from embedrag.engine.core.errors import TrainingInterrupted

        target = saved or self.output_dir / f"checkpoint-step-{self.state.global_step}"
        if saved is None:
            self.accelerator.wait_for_everyone()
            if self.is_main:
                self._atomic_folder(target, self._write_checkpoint)
                self._write_logs()
            self.accelerator.wait_for_everyone()
        raise TrainingInterrupted(f"interrupted at step {self.state.global_step} of {self.total_updates}: checkpoint "
                                  f"{target}; continue with --resume-from-checkpoint latest")

    def _done(self) -> bool:
        return self.state.global_step >= self.total_updates or self.stopped_early

    def _mean_across_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        import torch

        tensor = torch.tensor([value], device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="mean"))

    def _end_epoch(self) -> None:
        average = self.state.epoch_loss_sum / max(self.state.epoch_loss_count, 1)
        self.state.epoch_losses.append({"epoch": self.state.epoch + 1, "average_loss": average,
                                  "steps": self.state.epoch_loss_count, "global_step": self.state.global_step})
        self.state.epoch += 1
        self.state.micro_step = 0
        self.state.epoch_loss_sum, self.state.epoch_loss_count = 0.0, 0

    def elapsed(self) -> float:
        return self.seconds_before_resume + time.perf_counter() - self.run_start

    def _log_step(self, loss: float, grad_norm: float) -> None:
        seconds = self.elapsed()
        epoch_position = self.state.epoch + self.state.micro_step / self.micro_steps_per_epoch
        log = {
            "step": self.state.global_step,
            "epoch": round(epoch_position, 4),
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "seconds": round(seconds, 3),
            "samples_per_second": self.state.samples_seen / max(seconds, 1e-9),
            "tokens_per_second": self.state.tokens_seen / max(seconds, 1e-9),
        }
        self.state.logs.append(log)
        if self.is_main:
            if self.writer is not None:
                for key in ("loss", "lr", "grad_norm", "samples_per_second"):
                    self.writer.add_scalar(f"train/{key}", log[key], self.state.global_step)
            self.callback.on_step({**log, "total_steps": self.total_updates})

    # ------------------------------------------------------------ validation
    def _maybe_evaluate(self, *, epoch_end: bool) -> None:
        if not self.eval_examples:
            return
        due = epoch_end or (self.config.eval_steps and self.state.global_step % self.config.eval_steps == 0)
        if not due:
            return
        metrics = self.evaluate()
        self.state.last_metrics = metrics
        self.state.last_eval_step = self.state.global_step
        if self.is_main:
            if self.writer is not None:
                for key, value in metrics.items():
                    self.writer.add_scalar(f"eval/{key}", value, self.state.global_step)
            self.callback.on_evaluate({**metrics, "step": self.state.global_step})
        self.state.logs.append({"step": self.state.global_step, "epoch": round(self.state.epoch + self.state.micro_step
                                                                   / self.micro_steps_per_epoch, 4),
                          **{f"eval_{k}": v for k, v in metrics.items()}})
        self._track_best(metrics)

    def evaluate(self) -> dict[str, float]:
        import torch

        metrics: dict[str, float] = {}
        losses = []
        sampler = EpochSampler([(self.eval_examples, 1.0)], batch_size=self.config.batch_size,
                               neg_nums=self.config.neg_nums, seed=self.config.seed)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                for batch in sampler.batches(0):
                    loss, _ = self._forward_loss(batch)
                    losses.append(float(loss))
            metrics["loss"] = sum(losses) / max(len(losses), 1)
            # The automatic split encodes as eval does by default (bf16 where native);
            # an --eval-dataset keeps fp32, as it always did.
            retrieval, self.last_per_query = retrieval_metrics(
                self.encoder, self.eval_set, batch_size=self.config.eval_batch_size,
                precision="auto" if self.holdout else "fp32")
            metrics.update(retrieval)
        finally:
            self.module.train(was_training)
        return metrics

    def _track_best(self, metrics: dict[str, float]) -> None:
        key = self.config.metric_for_best
        value = metrics[key]
        better = (self.state.best_metric is None
                  or (value < self.state.best_metric if key == "loss" else value > self.state.best_metric))
        if better:
            self.state.best_metric, self.state.best_step = value, self.state.global_step
            self.state.best_per_query = self.last_per_query
            self.state.bad_evaluations = 0
            if self.is_main:
                self._save_model(self.output_dir / "best", metrics=metrics)
        else:
            self.state.bad_evaluations += 1
            patience = self.config.early_stopping_patience
            if patience is not None and self.state.bad_evaluations >= patience:
                logger.info("early stopping: %s did not improve for %d evaluation(s)", key, patience)
                self.stopped_early = True

    # ------------------------------------------------------------ saving
    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.module).backbone

    def _write_model_files(self, folder: Path, metrics: dict[str, float] | None = None) -> None:
        """Adapter (lora/qlora) or full model, tokenizer, embedrag.json, training_config.json."""
        from embedrag.engine.encoding.encoder import EMBEDRAG_CONFIG, quiet_transformers

        backbone = self._unwrapped()
        encoder = self.encoder
        encoder.config.extra["finetune"]["base_model"] = encoder.config.base_model
        if metrics:
            encoder.config.extra["validation_metrics"] = metrics
        if self.config.finetune_type == "full":
            previous, encoder.model = encoder.model, backbone
            try:
                encoder.write_files(folder)
            finally:
                encoder.model = previous
        else:
            with quiet_transformers():
                # Embeddings are never adapted; "auto" would also look the base up online.
                backbone.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
                encoder.tokenizer.save_pretrained(folder)
            encoder.config.dimension = encoder.dimension
            write_json(folder / EMBEDRAG_CONFIG, encoder.config.to_dict())
        self.config.save(folder / "training_config.json")

    def _save_model(self, target: Path, metrics: dict[str, float] | None = None) -> Path:
        return self._atomic_folder(target, lambda staging: self._write_model_files(staging, metrics))

    def _atomic_folder(self, target: Path, write) -> Path:
        from embedrag.engine.core.atomic import write_folder_atomically

        write_folder_atomically(target, write)
        self.callback.on_save(target)
        return target

    def _maybe_checkpoint(self, *, epoch_end: bool) -> Path | None:
        names = []
        if epoch_end and self.config.save_on_epoch_end:
            names.append(f"checkpoint-epoch-{self.state.epoch}")
        if self.config.save_steps and self.state.global_step % self.config.save_steps == 0:
            names.append(f"checkpoint-step-{self.state.global_step}")
        if not names:
            return None
        self.accelerator.wait_for_everyone()
        if self.is_main:
            for name in names:
                self._atomic_folder(self.output_dir / name, self._write_checkpoint)
            rotate_checkpoints(self.output_dir, self.config.save_total_limit)
            self._write_logs()
        self.accelerator.wait_for_everyone()
        return self.output_dir / names[-1]

    def _write_checkpoint(self, folder: Path) -> None:
        write_checkpoint(folder, model=self._unwrapped(), optimizer=self.optimizer, scheduler=self.scheduler,
                         state=self._state(), write_model_files=self._write_model_files)

    def _state(self) -> dict[str, Any]:
        return {**self.state.to_dict(), "seconds": self.elapsed(), "total_updates": self.total_updates,
                "finetune_type": self.config.finetune_type}

    def resume(self, checkpoint: Path) -> None:
        import torch

        saved = read_state(checkpoint)
        if saved.get("finetune_type") != self.config.finetune_type:
            raise ConfigError(f"{checkpoint} was trained with --finetune-type "
                              f"{saved.get('finetune_type')}, not {self.config.finetune_type}")
        # "cpu", not "cpu:0" (accelerate's name for it in a gloo run): neither safetensors
        # nor torch.load knows the latter.
        device = "cpu" if torch.device(self.accelerator.device).type == "cpu" else str(self.accelerator.device)
        restore_checkpoint(checkpoint, model=self._unwrapped(), optimizer=self.optimizer,
                           scheduler=self.scheduler, device=device)
        self.state = TrainState.from_dict(saved, checkpoint)
        self.seconds_before_resume = saved["seconds"]
        if self.state.micro_step >= self.micro_steps_per_epoch:
            self.state.epoch, self.state.micro_step = self.state.epoch + 1, 0

    # ------------------------------------------------------------ reporting
    def _tensorboard(self):
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed: no runs/ event files")
            return None
        return SummaryWriter(log_dir=str(self.output_dir / "runs"))

    def start_info(self) -> dict[str, Any]:
        from embedrag.engine.training.finetune import count_parameters

        trainable, total = count_parameters(self._unwrapped())
        return {
            "model": self.encoder.name, "finetune_type": self.config.finetune_type,
            "finetune_choice": self.finetune_choice,
            "quantization_bits": self.config.bits,
            "examples": sum(len(e) for e, _ in self.datasets),
            "eval_examples": len(self.eval_examples),
            "steps_per_epoch": self.updates_per_epoch, "total_steps": self.total_updates,
            "epochs": self.num_epochs, "start_step": self.state.global_step,
            "learning_rate": self.config.learning_rate, "temperature": self.config.temperature,
            "trainable_parameters": trainable, "total_parameters": total,
            "device": str(self.accelerator.device), "processes": self.accelerator.num_processes,
            "validation_split": self.holdout,
        }

    def _write_logs(self) -> None:
        write_json(self.output_dir / DETAILED_LOGS, self.state.logs)
        write_json(self.output_dir / EPOCH_LOSSES, self.state.epoch_losses)

    def _finish(self, seconds: float) -> TrainResult:

        self.accelerator.wait_for_everyone()
        final = self.output_dir / "final"
        best = self.output_dir / "best" if self.state.best_step is not None else None
        summary: dict[str, Any] = {}
        if self.is_main:
            if self.state.epoch_loss_count:  # a run that stopped mid-epoch still reports it
                self.state.epoch_losses.append({"epoch": self.state.epoch + 1, "average_loss": self.state.epoch_loss_sum
                                          / self.state.epoch_loss_count, "steps": self.state.epoch_loss_count,
                                          "global_step": self.state.global_step, "partial": True})
            verdict = self._verdict()
            self._save_final(final)
            self._write_logs()
            device_type = self.device_type
            summary = {
                "config": self.config.to_dict(),
                "start": self.started,
                "global_step": self.state.global_step,
                "epochs_completed": self.state.epoch,
                "wall_time_seconds": round(seconds, 3),
                "samples_per_second": self.state.samples_seen / max(seconds, 1e-9),
                "tokens_per_second": self.state.tokens_seen / max(seconds, 1e-9),
                "peak_memory_bytes": _peak_memory_bytes(device_type),
                "peak_memory_kind": "cuda max_memory_allocated during training" if device_type == "cuda"
                else "process peak RSS during training (model loaded)",
                "load_peak_memory_bytes": self.load_peak_memory,
                "final_loss": next((row["loss"] for row in reversed(self.state.logs) if "loss" in row), None),
                "best_metric": {"name": self.config.metric_for_best, "value": self.state.best_metric,
                                "step": self.state.best_step} if self.state.best_step is not None else None,
                "base_metrics": self.state.base_metrics,
                "final_metrics": self.state.last_metrics,
                "validation": {"source": self.config.eval_dataset or "automatic split",
                               "split": self.holdout, "verdict": verdict.to_dict() if verdict else None,
                               "final_model": self._final_is()},
                "stopped_early": self.stopped_early,
                "outputs": {"final": str(final), "best": str(best) if best else None},
            }
            write_json(self.output_dir / SUMMARY_REPORT, summary)
            if self.writer is not None:
                if verdict is not None:
                    self.writer.add_text("verdict", verdict.message, self.state.global_step)
                    self.writer.add_scalar(f"verdict/gain_{verdict.metric}", verdict.gain, self.state.global_step)
                    self.writer.add_scalar("verdict/p_permutation", verdict.p_permutation, self.state.global_step)
                self.writer.close()
            if verdict is not None and verdict.outcome == "not better":
                logger.warning("%s", verdict.message)
        result = TrainResult(output_dir=self.output_dir, final_dir=final, best_dir=best,
                             global_step=self.state.global_step, epochs_completed=self.state.epoch,
                             best_metric=self.state.best_metric, last_metrics=self.state.last_metrics,
                             stopped_early=self.stopped_early, seconds=seconds, summary=summary,
                             verdict=summary.get("validation", {}).get("verdict"))
        if self.is_main:
            self.callback.on_end(result)
        return result

    def _final_is(self) -> str:
        """What final/ holds: the best evaluated model, unless asked for the last or
        the last is the best (or nothing was evaluated)."""
        if self.config.final_model == "best" and self.state.best_step is not None and self.state.best_step != self.state.global_step:
            return f"best (step {self.state.best_step} of {self.state.global_step})"
        return f"last (step {self.state.global_step})"

    def _save_final(self, final: Path) -> None:
        if self._final_is().startswith("best"):
            best = self.output_dir / "best"
            self._atomic_folder(final, lambda staging: shutil.copytree(best, staging, dirs_exist_ok=True))
        else:
            self._save_model(final, metrics=self.state.last_metrics or None)

    def _verdict(self):
        """Base vs best on the validation split, when both were evaluated."""
        from embedrag.engine.training.holdout import Verdict

        metric = self.config.metric_for_best if self.config.metric_for_best != "loss" else "ndcg@10"
        if not self.state.base_per_query or not self.state.best_per_query:
            return None
        return Verdict.of(metric, {q: v[metric] for q, v in self.state.base_per_query.items()},
                          {q: v[metric] for q, v in self.state.best_per_query.items()}, self.state.best_step or 0)

    # ------------------------------------------------------------ dry run
    def dry_run(self) -> DryRunReport:
        from embedrag.engine.training.finetune import count_parameters

        batch = next(iter(self.sampler.batches(0)))
        queries = self.encoder.pad(self.encoder.tokenize(batch.queries, "query")["input_ids"])
        passages = self.encoder.pad(self.encoder.tokenize(batch.passages, "passage")["input_ids"])
        trainable, total = count_parameters(self._unwrapped())
        return DryRunReport(
            config=self.config.to_dict(), trainable_parameters=trainable, total_parameters=total,
            steps_per_epoch=self.updates_per_epoch, total_steps=self.total_updates,
            first_batch={"queries": list(queries["input_ids"].shape),
                         "passages": list(passages["input_ids"].shape),
                         "negatives_per_query": (len(batch.passages) - len(batch)) / max(len(batch), 1)})


def train(config: TrainConfig, callback: TrainCallback | None = None) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.train_datasets``; see :class:`TrainConfig`."""
    from embedrag.engine.training.finetune import quiet_bitsandbytes

    config.validate()
    quiet_bitsandbytes()
    trainer = _Trainer(config, callback)
    trainer.load_data()  # bad data fails here, before a model is loaded
    trainer.check_output_dir()
    trainer.build()
    if config.resume_from_checkpoint:
        trainer.resume(find_checkpoint(trainer.output_dir, config.resume_from_checkpoint))
    return trainer.run()


def dry_run(config: TrainConfig) -> DryRunReport:
    """Resolve everything a run would, build the first batch, train nothing."""
    from embedrag.engine.training.finetune import quiet_bitsandbytes

    config.validate()
    quiet_bitsandbytes()
    trainer = _Trainer(config, None)
    trainer.load_data()
    trainer.build()
    return trainer.dry_run()
