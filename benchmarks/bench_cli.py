"""Start-up time of the command line: median wall time of `embedrag --help` and
`embedrag --version` (each a fresh process), against `python -c pass` as the floor.

    .venv/bin/python benchmarks/bench_cli.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    embedrag = [sys.executable, "-m", "embedrag"]
    figures = {
        "python -c pass": median_seconds([sys.executable, "-c", "pass"], args.runs),
        "embedrag --help": median_seconds([*embedrag, "--help"], args.runs),
        "embedrag --version": median_seconds([*embedrag, "--version"], args.runs),
        "embedrag train --help": median_seconds([*embedrag, "train", "--help"], args.runs),
    }
    for name, seconds in figures.items():
        print(f"{name:<24} median {seconds * 1000:7.0f} ms over {args.runs} runs")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_cli.json").write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "runs": args.runs,
        "median_seconds": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
