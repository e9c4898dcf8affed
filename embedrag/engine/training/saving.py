"""Saving during training: model folders (best/, final/), checkpoints and resume.

The checkpoint files themselves are written and read by :mod:`checkpoints`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrag.engine.core.atomic import write_json
from embedrag.engine.core.errors import ConfigError
from embedrag.engine.training.checkpoints import (
    TrainState,
    read_state,
    restore_checkpoint,
    rotate_checkpoints,
    write_checkpoint,
)

if TYPE_CHECKING:
    import torch


class _Saving:
    """Writes model folders and checkpoints of the run, and resumes from a checkpoint."""

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

    def _save_final(self, final: Path) -> None:
        if self._final_is().startswith("best"):
            best = self.output_dir / "best"
            self._atomic_folder(final, lambda staging: shutil.copytree(best, staging, dirs_exist_ok=True))
        else:
            self._save_model(final, metrics=self.state.last_metrics or None)
