"""A training run's resumable state and its checkpoint folders.

A checkpoint is ``checkpoint-epoch-N/`` or ``checkpoint-step-N/`` in the output folder:
the model files (as ``final/``), the trainable weights, optimizer, scheduler and RNG
states, and ``trainer_state.json`` (:class:`TrainState` plus the run's clock), written
last: a folder without it is incomplete and never resumed from.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.atomic import write_json
from embedrag.engine.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

TRAINER_STATE = "trainer_state.json"
TRAINABLE_STATE = "trainable_state.safetensors"
# Keys a checkpoint written before the automatic validation split lacks.
_ADDED_LATER = ("base_per_query", "best_per_query", "last_eval_step")


@dataclass
class TrainState:
    """Everything of a run that changes step by step and a resume must restore."""

    global_step: int = 0
    epoch: int = 0
    micro_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evaluations: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    base_metrics: dict[str, float] = field(default_factory=dict)
    # Per-query validation scores of the base model and the best evaluation, for the
    # verdict's paired test.
    base_per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    best_per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    last_eval_step: int | None = None
    samples_seen: int = 0
    tokens_seen: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def epoch_position(self, micro_steps_per_epoch: int) -> float:
        """Epochs done, with the fraction of the current one (for the logs)."""
        return round(self.epoch + self.micro_step / micro_steps_per_epoch, 4)

    def record_epoch_loss(self, *, partial: bool = False) -> None:
        """Append the current epoch's average loss to ``epoch_losses`` (``partial``: a run
        that stopped mid-epoch)."""
        record = {"epoch": self.epoch + 1, "average_loss": self.epoch_loss_sum / max(self.epoch_loss_count, 1),
                  "steps": self.epoch_loss_count, "global_step": self.global_step}
        self.epoch_losses.append({**record, "partial": True} if partial else record)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], source: Path | str = "checkpoint") -> TrainState:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in saved and n not in _ADDED_LATER]
        if missing:
            raise ConfigError(f"{source}: {TRAINER_STATE} lacks {', '.join(missing)}")
        defaults = cls()
        return cls(**{n: saved.get(n, getattr(defaults, n)) for n in names})


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (their trainer state was written last), oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        state_file = path / TRAINER_STATE
        if path.is_dir() and state_file.is_file():
            try:
                step = json.loads(state_file.read_text(encoding="utf-8"))["global_step"]
            except (ValueError, KeyError):
                continue
            found.append((step, path.stat().st_mtime, path))
    return [p for _, _, p in sorted(found)]


def find_checkpoint(output_dir: Path, spec: str) -> Path:
    """``latest`` or an explicit checkpoint folder."""
    if spec == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise ConfigError(f"--resume-from-checkpoint latest: no complete checkpoint in {output_dir}")
        return found[-1]
    path = Path(spec)
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"--resume-from-checkpoint {spec}: not a complete checkpoint "
                          f"(no {TRAINER_STATE})")
    return path


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Keep the newest ``limit`` complete checkpoints (all when ``limit`` is falsy)."""
    if not limit:
        return
    for old in checkpoint_dirs(output_dir)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(folder: Path, *, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any],
                     write_model_files: Callable[[Path], None]) -> None:
    """Fill ``folder``: model files, trainable weights, optimizer/scheduler/RNG, then the state."""
    import torch
    from safetensors.torch import save_file

    write_model_files(folder)
    trainable = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(folder / TRAINABLE_STATE))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save(rng_state(), folder / "rng_state.pt")
    # Written last: a checkpoint without it is incomplete and never resumed from.
    write_json(folder / TRAINER_STATE, state)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json`` as written (TrainState keys and the clock)."""
    return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))


def restore_checkpoint(checkpoint: Path, *, model: torch.nn.Module, optimizer, scheduler, device: str) -> None:
    """Load the trainable weights into ``model`` and the optimizer/scheduler/RNG states."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / TRAINABLE_STATE), device=device)
    named = dict(model.named_parameters())
    missing = [name for name, p in named.items() if p.requires_grad and name not in weights]
    if missing or set(weights) - set(named):
        raise ConfigError(f"{checkpoint} does not match this model/options "
                          f"({len(missing)} missing, {len(set(weights) - set(named))} unexpected weights)")
    with torch.no_grad():
        for name, value in weights.items():
            named[name].copy_(value)
    # Every process reads the main process's files onto its own device.
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=False))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(checkpoint / "rng_state.pt", weights_only=False))
