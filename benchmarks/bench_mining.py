"""Do mined hard negatives help? Mine SciFact train with the bundled MiniLM, then train
LoRA on the mined file and on the same pairs without negatives (same steps, seed and
settings) and evaluate both on SciFact test, next to the base model.

Each step is the embedrag command line, run in its own process, one at a time (two
torch processes on a 2-core machine slow each other badly). Prints a table and writes
JSON to benchmarks/results/.

    .venv/bin/python benchmarks/bench_mining.py [--max-steps 40] [--neg-nums 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCIFACT = HERE.parent.parent / "shared" / "datasets" / "scifact"
EMBEDRAG = [sys.executable, "-m", "embedrag"]


def run(args: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([*EMBEDRAG, *args], stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    if code != 0:
        sys.exit(f"failed ({code}): embedrag {' '.join(args)}; see {log}")
    return time.perf_counter() - started


def strip_negatives(source: Path, target: Path) -> None:
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        for line in lines:
            record = json.loads(line)
            out.write(json.dumps({"query": record["query"], "pos": record["pos"]}, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=SCIFACT)
    parser.add_argument("--workdir", type=Path, default=HERE / "results" / "mining")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--neg-nums", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {}

    mined = work / "mined.jsonl"
    mined.unlink(missing_ok=True)
    figures["mine_seconds"] = run(["mine", "--beir", str(args.scifact), "--split", "train", "-o", str(mined),
                                   "--report", str(work / "mine_report.json")], work / "mine.log")
    figures["mine_report"] = json.loads((work / "mine_report.json").read_text())
    pairs = work / "pairs.jsonl"
    strip_negatives(mined, pairs)

    common = ["--model", "sentence-transformers/all-MiniLM-L6-v2", "--finetune-type", "lora",
              "--batch-size", str(args.batch_size), "--max-steps", str(args.max_steps), "--seed", str(args.seed),
              "--query-max-len", "64", "--passage-max-len", "256", "--overwrite-output-dir"]
    models = ["base=sentence-transformers/all-MiniLM-L6-v2"]
    for name, data, negs in (("pairs", pairs, 0), ("mined", mined, args.neg_nums)):
        out = work / f"lora-{name}"
        figures[f"train_{name}_seconds"] = run(
            ["train", "--train-dataset", str(data), "--output-dir", str(out), "--neg-nums", str(negs), *common],
            work / f"train-{name}.log")
        models.append(f"lora-{name}={out / 'final'}")
    report = work / "eval.json"
    figures["eval_seconds"] = run(["eval", "--beir", str(args.scifact), "--split", "test", "--output", str(report),
                                   *[x for m in models for x in ("--model", m)]], work / "eval.log")
    metrics = {m["name"]: m["metrics"] for m in json.loads(report.read_text())["models"]}

    print(f"SciFact train mined in {figures['mine_seconds']:.0f} s: "
          f"{figures['mine_report']['negatives_per_query']:.2f} negatives/query, removed "
          f"{figures['mine_report']['removed']}")
    print(f"{'model':<12} {'nDCG@10':>8} {'R@10':>8} {'MRR@10':>8} {'train s':>8}")
    for name, values in metrics.items():
        seconds = figures.get(f"train_{name.removeprefix('lora-')}_seconds")
        print(f"{name:<12} {values['ndcg@10']:>8.4f} {values['recall@10']:>8.4f} {values['mrr@10']:>8.4f} "
              f"{'' if seconds is None else f'{seconds:.0f}':>8}")
    result = {"date": datetime.now(timezone.utc).isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "settings": vars(args) | {"scifact": str(args.scifact),
                                                                "workdir": str(args.workdir)},
              "figures": figures, "metrics": metrics}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_mining.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
