"""What a training run hands back: progress hooks, the result of a run, a dry run's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
