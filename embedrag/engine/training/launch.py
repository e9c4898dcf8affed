"""Relaunching a command as several processes through ``accelerate launch``.

``embedrag train --num-processes N`` is a convenience for ``accelerate launch
--num_processes N -m embedrag train ...``: one process per GPU, or N CPU processes
talking over gloo where there is no GPU (accelerate's ``--cpu`` would start only one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from embedrag.engine.core.errors import ConfigError


def in_distributed_launch() -> bool:
    """True inside a process started by accelerate or torchrun."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def release_process_group() -> None:
    """Tear down torch.distributed's process group, if a run set one up, before the
    interpreter exits: left to exit-time destructors, gloo's threads can abort a process
    whose run succeeded ("terminate called without an active exception", SIGABRT). This
    makes that rarer, not impossible: CI saw it once more in the test helper afterwards,
    which therefore also skips interpreter teardown."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to look
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def launch_command(num_processes: int, argv: Sequence[str], *, gpus: int | None = None) -> list[str]:
    """The accelerate command that runs ``python -m embedrag ARGV`` in ``num_processes`` processes."""
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus and num_processes > gpus:
        raise ConfigError(f"--num-processes {num_processes}: only {gpus} GPU(s) here")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "embedrag", *argv]


def relaunch(num_processes: int, argv: Sequence[str] | None = None) -> int:
    """Run this command again as ``num_processes`` processes; returns their exit code."""
    if in_distributed_launch():
        raise ConfigError("--num-processes inside accelerate launch / torchrun: the launcher sets the count")
    argv = strip_option(list(sys.argv[1:] if argv is None else argv), "--num-processes")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(
        1, (os.cpu_count() or 1) // num_processes)))}
    return subprocess.call(launch_command(num_processes, argv), env=env)
