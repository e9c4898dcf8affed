"""The training loop: contrastive fine-tuning on accelerate.

``train(TrainConfig(...), callback)`` loads and checks the data (before any model),
loads the model for the fine-tune type, trains with AdamW and a warmup schedule,
validates, checkpoints (exactly resumable) and writes the output layout of docs/commands/train.md.
Only the main process writes files; progress goes to a :class:`TrainCallback`.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.encoding.precision import accelerate_mixed_precision
from embedrag.engine.training.checkpoints import TrainState, find_checkpoint
from embedrag.engine.training.reporting import (
    DETAILED_LOGS,
    EPOCH_LOSSES,
    SUMMARY_REPORT,
    _Reporting,
)
from embedrag.engine.training.results import DryRunReport, TrainCallback, TrainResult
from embedrag.engine.training.sampling import ContrastiveBatch
from embedrag.engine.training.saving import _Saving
from embedrag.engine.training.setup import _SetUp
from embedrag.engine.training.train_config import TrainConfig
from embedrag.engine.training.validation import _Validation, retrieval_metrics, validation_set

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["DETAILED_LOGS", "EPOCH_LOSSES", "SUMMARY_REPORT", "DryRunReport", "TrainCallback", "TrainResult",
           "dry_run", "retrieval_metrics", "train", "validation_set"]


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


class _Trainer(_SetUp, _Validation, _Saving, _Reporting):
    """State of one run; ``train()`` drives it. Set-up, validation, saving and reporting are
    its parts (the bases); the loop here is what calls them."""

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
        self.run_start = time.perf_counter()
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.writer = self._tensorboard()
            self.started = self.start_info()
            self.callback.on_start(self.started)
        if self.eval_examples and self.config.eval_on_start and self.state.global_step == 0:
            self.state.base_metrics = self.evaluate()
            self.state.base_per_query = self.last_per_query
            self._report_evaluation(self.state.base_metrics, 0)
        with _StopRequest() as stop:
            self._loop(stop, accumulation)
        if self.eval_examples and self.state.last_eval_step != self.state.global_step:
            self._maybe_evaluate(epoch_end=True)  # the model that training ended with is judged too
        return self._finish(self.elapsed())

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
        self.state.record_epoch_loss()
        self.state.epoch += 1
        self.state.micro_step = 0
        self.state.epoch_loss_sum, self.state.epoch_loss_count = 0.0, 0

    def elapsed(self) -> float:
        return self.seconds_before_resume + time.perf_counter() - self.run_start

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
