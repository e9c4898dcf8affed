"""The two-stage "hard example" recipe on the SciFact slice, measured at every point.

Stage 1 trains LoRA on the slice's train queries with mined negatives; stage 2 keeps the
lines whose positive stage 1 still ranks below the top 3 of their own candidates and
retrains on them with a margin ranking loss, starting from stage 1's adapter (the
ScienceQA report's second stage: margin 0.1, 5 epochs, lr 1e-5). Reported before stage 1,
after stage 1 and after stage 2: Top-1/3/5 accuracy over each held-out test query's own
candidates (its positive + 9 negatives mined with the base model) and full-corpus
nDCG@10 on the slice's test queries.

Every step is the embedrag command line, run one at a time.

    .venv/bin/python benchmarks/bench_hard_examples.py [--stage2-lr 1e-5]
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
SLICE = HERE.parent / "datasets" / "scifact-slice"
EMBEDRAG = [sys.executable, "-m", "embedrag"]
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def run(args: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([*EMBEDRAG, *args], stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    if code != 0:
        sys.exit(f"failed ({code}): embedrag {' '.join(args)}; see {log}")
    return time.perf_counter() - started


def measure(model: str, work: Path, label: str, test_candidates: Path) -> dict[str, float]:
    """Top-1/3/5 over each test query's own candidates and full-corpus nDCG@10."""
    per_query, corpus = work / f"eval-{label}-per-query.json", work / f"eval-{label}-corpus.json"
    run(["eval", "--test-dataset", str(test_candidates), "--candidates", "per-query", "--model",
         f"{label}={model}", "--k", "1,3,5,10", "--output", str(per_query)], work / f"eval-{label}-pq.log")
    run(["eval", "--beir", str(SLICE), "--split", "test", "--model", f"{label}={model}",
         "--output", str(corpus)], work / f"eval-{label}-corpus.log")
    a = json.loads(per_query.read_text())["models"][0]["metrics"]
    b = json.loads(corpus.read_text())["models"][0]["metrics"]
    return {"top1": a["hit@1"], "top3": a["hit@3"], "top5": a["hit@5"], "ndcg@10": b["ndcg@10"],
            "recall@10": b["recall@10"]}


def measured(work: Path, label: str) -> dict[str, float]:
    """A point measured by an earlier run (--reuse)."""
    a = json.loads((work / f"eval-{label}-per-query.json").read_text())["models"][0]["metrics"]
    b = json.loads((work / f"eval-{label}-corpus.json").read_text())["models"][0]["metrics"]
    return {"top1": a["hit@1"], "top3": a["hit@3"], "top5": a["hit@5"], "ndcg@10": b["ndcg@10"],
            "recall@10": b["recall@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=HERE / "results" / "hard_examples")
    parser.add_argument("--stage1-epochs", type=int, default=2)
    parser.add_argument("--stage2-epochs", type=int, default=5)
    parser.add_argument("--stage2-lr", type=float, default=1e-5)
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the mined files, stage 1 and its measurements from an earlier run")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    train_lines, test_candidates, failing = work / "train-mined.jsonl", work / "test-candidates.jsonl", \
        work / "failing.jsonl"
    reuse = args.reuse and (work / "stage1" / "final").is_dir()
    for path in (failing, *(() if reuse else (train_lines, test_candidates))):
        path.unlink(missing_ok=True)
    if not reuse:
        seconds["mine_train"] = run(["mine", "-i", str(SLICE / "train.jsonl"), "--corpus", str(SLICE), "--replace",
                                     "--negatives", "9", "-o", str(train_lines)], work / "mine-train.log")
    # The test candidates: the base model's 9 best non-positives for each test query (no
    # margin, so every query has 10 candidates), fixed for every point measured.
        seconds["mine_test"] = run(["mine", "--beir", str(SLICE), "--split", "test", "--negatives", "9",
                                    "--range", "0-30", "--relative-margin", "0", "-o", str(test_candidates)],
                                   work / "mine-test.log")
    common = ["--model", BASE, "--finetune-type", "lora", "--batch-size", "16", "--neg-nums", "3",
              "--query-max-len", "64", "--passage-max-len", "256", "--seed", str(args.seed),
              "--overwrite-output-dir"]
    stage1 = work / "stage1"
    if reuse:
        points = {label: measured(work, label) for label in ("base", "stage1")}
    else:
        points = {"base": measure(BASE, work, "base", test_candidates)}
        seconds["stage1"] = run(["train", "--train-dataset", str(train_lines), "--output-dir", str(stage1),
                                 "--epochs", str(args.stage1_epochs), *common], work / "train-stage1.log")
        points["stage1"] = measure(str(stage1 / "final"), work, "stage1", test_candidates)

    report = work / "failing-report.json"
    # Over the whole corpus: the lines' own candidates were mined with a margin below their
    # positive, so per line the positive already ranks first for the base model.
    seconds["select"] = run(["mine", "--only-failing", "3", "-i", str(train_lines), "--candidates", "all",
                             "--corpus", str(SLICE), "-m", str(stage1 / "final"), "-o", str(failing),
                             "--report", str(report)], work / "select.log")
    selection = json.loads(report.read_text())

    stage2 = work / "stage2"
    seconds["stage2"] = run(["train", "--train-dataset", str(failing), "--output-dir", str(stage2),
                             "--init-from", str(stage1 / "final"), "--loss", "margin-ranking", "--margin",
                             str(args.margin), "--lr", str(args.stage2_lr), "--epochs", str(args.stage2_epochs),
                             *common], work / "train-stage2.log")
    points["stage2"] = measure(str(stage2 / "final"), work, "stage2", test_candidates)

    print(f"stage 2 trains on {selection['kept']} of {selection['lines']} train lines "
          f"(stage-1 train accuracy {selection['accuracy']})")
    print(f"{'point':<8} {'top-1':>7} {'top-3':>7} {'top-5':>7} {'nDCG@10':>8} {'R@10':>7}")
    for name, m in points.items():
        print(f"{name:<8} {m['top1']:>7.4f} {m['top3']:>7.4f} {m['top5']:>7.4f} {m['ndcg@10']:>8.4f} "
              f"{m['recall@10']:>7.4f}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    result = {"date": datetime.now(timezone.utc).isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "settings": {k: str(v) for k, v in vars(args).items()},
              "selection": selection, "points": points, "seconds": seconds}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_hard_examples.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
