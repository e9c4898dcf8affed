"""Run one training step and save what it did: the loss, every trainable parameter's
gradient (after DDP's reduction) and its value after the optimizer step.

Run as a plain script for one process, or under ``torchrun --nproc_per_node N`` for
several; each rank writes ``<out>/rank<r>.pt``. Used by tests/test_scale_out.py.

    python tests/helpers/step_probe.py CONFIG.json OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    import torch

    from embedrag.engine.training.train import _Trainer
    from embedrag.engine.training.train_config import TrainConfig

    config = TrainConfig(**json.loads(Path(sys.argv[1]).read_text())).validate()
    out = Path(sys.argv[2])
    trainer = _Trainer(config, None)
    trainer.load_data()
    trainer.build()
    batch = next(iter(trainer.sampler.batches(0)))
    step = trainer.contrastive_step(batch, 1.0)
    backbone = trainer._unwrapped()
    names = {id(p): n for n, p in backbone.named_parameters()}
    grads = {names[id(p)]: p.grad.detach().clone() for p in trainer.parameters if p.grad is not None}
    trainer.optimizer.step()
    weights = {names[id(p)]: p.detach().clone() for p in trainer.parameters}
    rank = int(os.environ.get("RANK", "0"))
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"loss": step.loss, "grads": grads, "weights": weights, "queries": len(batch), "batch": {"queries": batch.queries, "passages": batch.passages},
                "passages": len(batch.passages)}, out / f"rank{rank}.pt")
    from embedrag.engine.training.launch import release_process_group

    release_process_group()
    # Everything is written. Skip interpreter teardown: a gloo/bitsandbytes thread still
    # joinable there aborted a rank ("terminate called without an active exception",
    # SIGABRT) in CI even after the process group was destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
