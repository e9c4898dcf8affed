"""Reporting of a training run: step logs, TensorBoard, start info, the summary report
and memory probes."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.atomic import write_json
from embedrag.engine.training.results import TrainResult

if TYPE_CHECKING:
    from embedrag.engine.training.holdout import Verdict

logger = logging.getLogger(__name__)

DETAILED_LOGS = "detailed_training_logs.json"
EPOCH_LOSSES = "training_losses.json"
SUMMARY_REPORT = "training_summary_report.json"


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


class _Reporting:
    """Logs, TensorBoard events, the start info and the summary report of the run."""

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
                self.state.record_epoch_loss(partial=True)
            verdict = self._verdict()
            self._save_final(final)
            self._write_logs()
            summary = self._summary(seconds, verdict, final, best)
            write_json(self.output_dir / SUMMARY_REPORT, summary)
            self._report_verdict(verdict)
        result = TrainResult(output_dir=self.output_dir, final_dir=final, best_dir=best,
                             global_step=self.state.global_step, epochs_completed=self.state.epoch,
                             best_metric=self.state.best_metric, last_metrics=self.state.last_metrics,
                             stopped_early=self.stopped_early, seconds=seconds, summary=summary,
                             verdict=summary.get("validation", {}).get("verdict"))
        if self.is_main:
            self.callback.on_end(result)
        return result

    def _summary(self, seconds: float, verdict: Verdict | None, final: Path, best: Path | None) -> dict[str, Any]:
        """training_summary_report.json: the run's config, counts, speed, memory and verdict."""
        device_type = self.device_type
        return {
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

    def _report_verdict(self, verdict: Verdict | None) -> None:
        """The verdict in TensorBoard (closing the writer) and, when the run did not help, as a warning."""
        if self.writer is not None:
            if verdict is not None:
                self.writer.add_text("verdict", verdict.message, self.state.global_step)
                self.writer.add_scalar(f"verdict/gain_{verdict.metric}", verdict.gain, self.state.global_step)
                self.writer.add_scalar("verdict/p_permutation", verdict.p_permutation, self.state.global_step)
            self.writer.close()
        if verdict is not None and verdict.outcome == "not better":
            logger.warning("%s", verdict.message)

    def _log_step(self, loss: float, grad_norm: float) -> None:
        seconds = self.elapsed()
        log = {
            "step": self.state.global_step,
            "epoch": self.state.epoch_position(self.micro_steps_per_epoch),
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
