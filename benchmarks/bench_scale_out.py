"""Scale-out on this machine: GradCache peak memory, and 2 processes vs 1.

- memory: LoRA on the bundled MiniLM, one contrastive batch of --batch-size queries with
  3 hard negatives each, with and without --mini-batch-size; peak memory from each run's
  training_summary_report.json (peak RSS during training on CPU, CUDA peak on a GPU).
- processes: the SciFact slice, LoRA, the same global batch of 16 as 1 process x 16 and
  as 2 processes x 8 (`embedrag train --num-processes 2`, i.e. accelerate launch, gloo on
  CPU). The 2-process run is killed once its first checkpoint is complete and resumed
  with --resume-from-checkpoint latest; wall times of both parts are reported.

    .venv/bin/python benchmarks/bench_scale_out.py [memory] [processes]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLICE = HERE.parent / "datasets" / "scifact-slice"
EMBEDRAG = [sys.executable, "-m", "embedrag"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def train(args: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([*EMBEDRAG, "train", *args], stdout=out, stderr=subprocess.STDOUT, env=ENV)
    if code != 0:
        sys.exit(f"failed ({code}): see {log}")
    return time.perf_counter() - started


def summary(folder: Path) -> dict:
    return json.loads((folder / "training_summary_report.json").read_text())


def memory(work: Path, batch_size: int, steps: int) -> dict:
    results = {}
    for mini in (None, 8, 4):
        name = f"mini{mini}" if mini else "full-batch"
        out = work / f"memory-{name}"
        args = ["--train-dataset", str(SLICE / "train.jsonl"), "--output-dir", str(out), "--finetune-type", "lora",
                "--batch-size", str(batch_size), "--neg-nums", "3", "--max-steps", str(steps),
                "--query-max-len", "64", "--passage-max-len", "256", "--no-save-on-epoch-end",
                "--overwrite-output-dir"] + (["--mini-batch-size", str(mini)] if mini else [])
        seconds = train(args, work / f"memory-{name}.log")
        report = summary(out)
        results[name] = {"peak_memory_mib": round(report["peak_memory_bytes"] / 2**20),
                         "seconds": round(seconds, 1), "samples_per_second": report.get("samples_per_second")}
        print(f"{name:<11} peak {results[name]['peak_memory_mib']:>6} MiB  {seconds:6.0f} s", flush=True)
    return results


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any((c / "trainer_state.json").is_file() for c in out.glob("checkpoint-*")):
            return True
        time.sleep(2)
    return False


def processes(work: Path, steps: int, save_steps: int) -> dict:
    common = ["--train-dataset", str(SLICE / "train.jsonl"), "--finetune-type", "lora", "--neg-nums", "3",
              "--max-steps", str(steps), "--save-steps", str(save_steps), "--no-save-on-epoch-end",
              "--query-max-len", "64", "--passage-max-len", "256", "--seed", "7"]
    one = work / "one-process"
    t_one = train([*common, "--output-dir", str(one), "--batch-size", "16", "--overwrite-output-dir"],
                  work / "one-process.log")
    two = work / "two-processes"
    args = [*EMBEDRAG, "train", *common, "--output-dir", str(two), "--batch-size", "8", "--num-processes", "2",
            "--overwrite-output-dir"]
    started = time.perf_counter()
    with (work / "two-processes-part1.log").open("w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        reached = _wait_for_checkpoint(two, process, timeout=3600)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    t_part1 = time.perf_counter() - started
    if not reached:
        sys.exit("the 2-process run ended before its first checkpoint")
    t_part2 = train([*common, "--output-dir", str(two), "--batch-size", "8", "--num-processes", "2",
                     "--resume-from-checkpoint", "latest"], work / "two-processes-part2.log")
    report_one, report_two = summary(one), summary(two)
    result = {"one_process_seconds": round(t_one, 1), "two_processes_until_kill_seconds": round(t_part1, 1),
              "two_processes_resumed_seconds": round(t_part2, 1),
              "one_process_final_loss": report_one.get("final_loss"),
              "two_processes_final_loss": report_two.get("final_loss"),
              "two_processes_steps": report_two.get("global_step"),
              "processes": report_two["start"].get("processes")}
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["memory", "processes"])
    parser.add_argument("--workdir", type=Path, default=HERE / "results" / "scale_out")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save-steps", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {"date": datetime.now(timezone.utc).isoformat(),
                    "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if "memory" in args.parts:
        result["memory"] = memory(args.workdir, args.batch_size, args.memory_steps)
    if "processes" in args.parts:
        result["processes"] = processes(args.workdir, args.steps, args.save_steps)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_scale_out.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
