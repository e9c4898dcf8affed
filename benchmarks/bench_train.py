"""Training speed and memory: embedrag against sentence-transformers, and qlora vs lora vs full.

Part ``throughput``: full fine-tuning of the bundled all-MiniLM-L6-v2 (resolved the way
embedrag resolves it) on SciFact train (query, positive) pairs with in-batch negatives,
with embedrag (``embedrag.engine.training.train.train``, what ``embedrag train`` runs, with a
callback stamping each step) twice, at its default (no dropout on attention
probabilities while training, which lets the fused attention kernel run) and with
``--attention-dropout model`` (the model's own 0.1, which sentence-transformers trains
with), and once with sentence-transformers, with identical settings otherwise: batch 16,
lr 2e-5, linear schedule without warmup, AdamW, gradient clipping at 1.0, fp32, InfoNCE
temperature 0.05 == MultipleNegativesRankingLoss scale 20, passages truncated at 256
tokens, queries at 64 (sentence-transformers has one max_seq_length for both, 256; 1 of
the 809 SciFact queries is longer than 64 tokens), the same number of steps and the same
torch thread count. sentence-transformers runs through its own
SentenceTransformerTrainer (no-duplicates batch sampler, as it recommends for this loss)
when the ``datasets`` package is importable, else through a plain loop over the model's
forward and the same loss (``--st-mode``). Each run is its own process; pairs/s counts
the steps after ``--warmup-steps`` (model loading excluded), in wall time and in process
CPU time (user + sys of all threads: steadier than wall time on a shared CPU); peak
memory is the process's ru_maxrss, and the peak during training (VmHWM reset once the
model is loaded).

Part ``memory``: the qlora-4bit / lora / full runs of ``bench_train_memory.py`` (imported
from this folder, not copied) on a ~110M-parameter Qwen2-style decoder built from a config.

Prints tables and writes ``results/bench_train.json`` next to this script.

    .venv/bin/python benchmarks/bench_train.py [throughput] [memory] [--steps 20] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_name, hf_datasets_installed, versions

HERE = Path(__file__).resolve().parent
SCIFACT_TRAIN = HERE.parent.parent / "shared" / "datasets" / "scifact" / "train.jsonl"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PARTS = ("throughput", "memory")
VERSIONED = ("embedrag", "torch", "transformers", "sentence-transformers", "accelerate", "peft",
             "bitsandbytes", "datasets")
RSS_GOAL = 0.6  # qlora-4bit peak <= 0.6 x lora peak
SPEED_GOAL = 1.2  # embedrag >= 1.2 x sentence-transformers pairs/s
MODEL_DROPOUT = "embedrag --attention-dropout model"  # the model's 0.1, as sentence-transformers trains


# ---------------------------------------------------------------------- child processes




def _max_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _pairs(data: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["query"], row["pos"][0]) for row in rows]


class _Clock:
    """Wall and process CPU seconds (all threads, user + sys) at the end of each step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []

    def start(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def tick(self) -> None:
        self.ends.append(time.perf_counter() - self.wall0)
        self.cpu_ends.append(time.process_time() - self.cpu0)


def child_embedrag(spec: dict, out: Path) -> dict:
    """embedrag's training loop through its Python API (what `embedrag train` runs, minus
    the progress bar), with a callback that stamps every optimizer step."""
    from embedrag.engine.training.train import TrainCallback, train
    from embedrag.engine.training.train_config import TrainConfig

    total = spec["warmup_steps"] + spec["steps"]
    run_dir = out / "run"
    config = TrainConfig(
        train_datasets=[spec["data"]], output_dir=str(run_dir), model=MODEL, finetune_type="full",
        batch_size=spec["batch_size"], lr=spec["lr"], temperature=spec["temperature"], neg_nums=0,
        in_batch_negatives=True, query_max_len=spec["query_max_len"],
        passage_max_len=spec["passage_max_len"], max_steps=total, warmup_proportion=0.0,
        scheduler="linear", max_grad_norm=1.0, weight_decay=0.0, mixed_precision="no",
        attention_dropout=spec["attention_dropout"], seed=spec["seed"], save_on_epoch_end=False)
    clock = _Clock()

    class Stamp(TrainCallback):
        def on_start(self, info):
            clock.start()

        def on_step(self, log):
            clock.tick()

    train(config, Stamp())
    logs = json.loads((run_dir / "detailed_training_logs.json").read_text())
    summary = json.loads((run_dir / "training_summary_report.json").read_text())
    command = ["embedrag", "train", "--model", MODEL, "--train-dataset", spec["data"], "--output-dir", "OUT",
               "--finetune-type", "full", "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]),
               "--temperature", str(spec["temperature"]), "--neg-nums", "0",
               "--query-max-len", str(spec["query_max_len"]), "--passage-max-len",
               str(spec["passage_max_len"]), "--max-steps", str(total), "--warmup-proportion", "0",
               "--attention-dropout", "model" if spec["attention_dropout"] is None else str(spec["attention_dropout"]),
               "--no-save-on-epoch-end"]
    return {"step_ends": clock.ends, "cpu_ends": clock.cpu_ends,
            "losses": [row["loss"] for row in logs if "loss" in row],
            "train_peak_bytes": summary["peak_memory_bytes"], "detail": "embedrag.engine.training.train.train",
            "same_as_cli": " ".join(command)}


def child_st(spec: dict, out: Path) -> dict:
    """sentence-transformers: its trainer, or a plain loop when asked (or ``datasets`` is missing)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embedrag.engine.encoding.models import resolve_model
    from embedrag.engine.training.train import (  # measured as embedrag's own
        _peak_memory_bytes,
        _reset_peak_memory,
    )

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    path = resolve_model(MODEL, allow_download=False).path
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = spec["passage_max_len"]
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / spec["temperature"])
    pairs = _pairs(Path(spec["data"]))
    total = spec["warmup_steps"] + spec["steps"]
    clock = _Clock()
    losses: list[float] = []
    mode = spec["st_mode"]
    if mode == "auto":
        mode = "trainer" if hf_datasets_installed() else "loop"
    if mode == "trainer":
        from sentence_transformers import (
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.base.sampler import BatchSamplers
        from transformers import TrainerCallback

        from datasets import Dataset

        class Clock(TrainerCallback):
            def on_train_begin(self, *args, **kwargs):
                _reset_peak_memory("cpu")
                clock.start()

            def on_step_end(self, *args, **kwargs):
                clock.tick()

        dataset = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
        arguments = SentenceTransformerTrainingArguments(
            output_dir=str(out / "st"), max_steps=total, per_device_train_batch_size=spec["batch_size"],
            learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=1.0, seed=spec["seed"], save_strategy="no", report_to="none",
            logging_steps=1, disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
            batch_sampler=BatchSamplers.NO_DUPLICATES, dataloader_num_workers=0)
        trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset, loss=loss,
                                             callbacks=[Clock()])
        trainer.train()
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        detail = f"SentenceTransformerTrainer (optim {arguments.optim})"
    else:
        from transformers import get_scheduler

        random.Random(spec["seed"]).shuffle(pairs)
        torch.manual_seed(spec["seed"])
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=spec["lr"], weight_decay=0.0)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total)
        model.train()
        _reset_peak_memory("cpu")
        clock.start()
        batch = spec["batch_size"]
        for step in range(total):
            rows = pairs[step * batch:(step + 1) * batch]
            features = [model.preprocess([q for q, _ in rows]), model.preprocess([p for _, p in rows])]
            value = loss(features, None)
            value.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(value.detach()))
            clock.tick()
        detail = "plain loop: model.preprocess + MultipleNegativesRankingLoss, torch AdamW"
    return {"step_ends": clock.ends, "cpu_ends": clock.cpu_ends, "losses": losses,
            "train_peak_bytes": _peak_memory_bytes("cpu"), "st_mode": mode,
            "detail": detail}


def child_main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    import torch

    torch.set_num_threads(spec["threads"])
    out = Path(spec["out"])
    run = child_embedrag if spec["tool"].startswith("embedrag") else child_st
    result = run(spec, out)
    result.update(max_rss_bytes=_max_rss(), torch_threads=torch.get_num_threads())
    (out / "result.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------- throughput
def run_child(tool: str, args, tmp: Path, index: int) -> dict:
    out = tmp / f"{tool.split()[0]}-{'model-dropout-' if tool == MODEL_DROPOUT else ''}{index}"
    out.mkdir()
    spec = {"tool": tool, "out": str(out), "data": str(args.data), "threads": args.threads,
            "steps": args.steps, "warmup_steps": args.warmup_steps, "batch_size": args.batch_size,
            "lr": args.lr, "temperature": args.temperature, "query_max_len": args.query_max_len,
            "passage_max_len": args.passage_max_len, "seed": args.seed, "st_mode": args.st_mode,
            "attention_dropout": None if tool == MODEL_DROPOUT else 0.0}
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    log = out / "log.txt"
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child", json.dumps(spec)],
                              stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f"{tool} run failed ({done.returncode}):\n" + log.read_text()[-4000:])
    result = json.loads((out / "result.json").read_text())
    ends = result["step_ends"]
    total = args.warmup_steps + args.steps
    if len(ends) != total:
        sys.exit(f"{tool}: expected {total} steps, got {len(ends)}")
    first = args.warmup_steps - 1
    window = ends[-1] - ends[first]
    cpu = result["cpu_ends"][-1] - result["cpu_ends"][first]
    durations = [b - a for a, b in zip(ends[first:], ends[first + 1:])]
    pairs = args.steps * args.batch_size
    result.update(tool=tool, process_seconds=round(time.perf_counter() - started, 1),
                  timed_seconds=window, timed_cpu_seconds=cpu, pairs_per_second=pairs / window,
                  pairs_per_cpu_second=pairs / cpu, median_step_seconds=statistics.median(durations),
                  step_seconds=durations)
    return result


def throughput(args) -> dict:
    runs: dict[str, list[dict]] = {"embedrag": [], MODEL_DROPOUT: [], "sentence-transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeats):  # alternated, so drift on a shared CPU hits all
            for tool in runs:
                runs[tool].append(run_child(tool, args, Path(tmp), index))
    best = {tool: max(rows, key=lambda r: r["pairs_per_second"]) for tool, rows in runs.items()}
    er, same, st = best["embedrag"], best[MODEL_DROPOUT], best["sentence-transformers"]
    ratio = er["pairs_per_second"] / st["pairs_per_second"]
    cpu_ratio = er["pairs_per_cpu_second"] / st["pairs_per_cpu_second"]
    same_ratio = same["pairs_per_second"] / st["pairs_per_second"]
    print(f"throughput: full fine-tune of {MODEL} on {args.data.name}, batch {args.batch_size} pairs, "
          f"{args.steps} timed steps after {args.warmup_steps}, {args.threads} threads, best of "
          f"{args.repeats}; sentence-transformers: {st['detail']}")
    print(f"{'tool':<40} {'pairs/s':>8} {'pairs/cpu-s':>12} {'median step s':>14} {'peak RSS MiB':>13} "
          f"{'train peak MiB':>15} {'last loss':>10}")
    for tool, row in best.items():
        print(f"{tool:<40} {row['pairs_per_second']:>8.2f} {row['pairs_per_cpu_second']:>12.3f} "
              f"{row['median_step_seconds']:>14.2f} {row['max_rss_bytes'] / 2**20:>13.0f} "
              f"{row['train_peak_bytes'] / 2**20:>15.0f} {row['losses'][-1]:>10.4f}")
    print(f"embedrag / sentence-transformers: {ratio:.2f}x pairs/s, {cpu_ratio:.2f}x pairs per CPU-second "
          f"(goal >= {SPEED_GOAL}x pairs/s: {'met' if ratio >= SPEED_GOAL else 'NOT met'}); with the model's "
          f"attention dropout, as sentence-transformers trains: {same_ratio:.2f}x")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("parts",) and not k.startswith("memory_")}
    return {"settings": settings | {"model": MODEL, "finetune_type": "full", "scale": 1 / args.temperature,
                                    "precision": "fp32", "st_max_seq_length": args.passage_max_len},
            "runs": runs, "pairs_per_second": {t: r["pairs_per_second"] for t, r in best.items()},
            "pairs_per_cpu_second": {t: r["pairs_per_cpu_second"] for t, r in best.items()},
            "ratio": ratio, "cpu_ratio": cpu_ratio, "ratio_with_model_attention_dropout": same_ratio,
            "goal": SPEED_GOAL, "goal_met": ratio >= SPEED_GOAL}


# ---------------------------------------------------------------------- memory
def _memory_module():
    spec = importlib.util.spec_from_file_location("bench_train_memory", HERE / "bench_train_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runtime_baseline_bytes() -> int | None:
    """RSS of a process that has imported everything a training run imports, but loaded
    no model: on CPU the process peak includes this ~1 GiB runtime, which a GPU's
    max_memory_allocated would not."""
    code = ("import torch, transformers, accelerate, peft, bitsandbytes\n"
            "import embedrag.engine.training.train, embedrag.engine.training.finetune\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = done.stdout.split()
    return int(lines[-1]) * 1024 if done.returncode == 0 and lines else None


def memory(args) -> dict:
    mem = _memory_module()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    settings = argparse.Namespace(steps=args.memory_steps, batch_size=args.memory_batch_size,
                                  query_max_len=args.memory_query_max_len,
                                  passage_max_len=args.memory_passage_max_len,
                                  gradient_checkpointing=args.memory_gradient_checkpointing)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = mem.build_decoder(tmp / "decoder", args.memory_layers, args.memory_hidden, args.memory_vocab)
        mem.write_data(tmp / "data.jsonl")
        rows = [mem.run_one(tmp / "decoder", tmp / "data.jsonl", tmp / f"out-{kind}", kind, settings)
                for kind in ("qlora", "lora", "full")]
    peaks = {row["finetune_type"]: row["peak_memory_mib"] for row in rows}
    ratio = peaks["qlora"] / peaks["lora"]
    baseline = runtime_baseline_bytes() if rows[0]["peak_memory_kind"].startswith("process") else None
    baseline_mib = baseline / 2**20 if baseline else 0.0
    for row in rows:
        row["peak_above_runtime_mib"] = row["peak_memory_mib"] - baseline_mib
    net_ratio = (peaks["qlora"] - baseline_mib) / (peaks["lora"] - baseline_mib)
    print(f"memory: Qwen2-style decoder from a config, {params / 1e6:.1f}M parameters, batch "
          f"{args.memory_batch_size} queries x {args.memory_query_max_len} + 3 passages x "
          f"{args.memory_passage_max_len} tokens, {args.memory_steps} steps"
          f"{', gradient checkpointing' if args.memory_gradient_checkpointing else ''}; {rows[0]['peak_memory_kind']}")
    print(f"{'type':<8} {'peak MiB':>10} {'above runtime MiB':>18} {'trainable':>12} {'train s':>9}")
    for row in rows:
        print(f"{row['finetune_type']:<8} {row['peak_memory_mib']:>10.0f} {row['peak_above_runtime_mib']:>18.0f} "
              f"{row['trainable_parameters']:>12,} {row['train_seconds']:>9.1f}")
    if baseline:
        print(f"runtime baseline (torch, transformers, peft, bitsandbytes, embedrag imported; no model): "
              f"{baseline_mib:.0f} MiB; qlora-4bit / lora above it: {net_ratio:.2f}")
    print(f"qlora-4bit / lora peak: {ratio:.2f} (goal <= {RSS_GOAL}: {'met' if ratio <= RSS_GOAL else 'NOT met'})")
    return {"model_parameters": params, "settings": vars(settings) | {
                "layers": args.memory_layers, "hidden": args.memory_hidden, "vocab": args.memory_vocab},
            "rows": rows, "qlora_over_lora": ratio, "runtime_baseline_bytes": baseline,
            "qlora_over_lora_above_runtime": net_ratio if baseline else None,
            "goal": RSS_GOAL, "goal_met": ratio <= RSS_GOAL}


# ---------------------------------------------------------------------- main
def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"{' and/or '.join(PARTS)} (default: both)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, every run")
    parser.add_argument("--data", type=Path, default=SCIFACT_TRAIN, help="embedrag JSONL (query, pos, neg)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each throughput run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before them (>= 1)")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs per tool (best counts)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--temperature", type=float, default=0.05, help="= 1 / MNRL scale")
    parser.add_argument("--query-max-len", type=int, default=64)
    parser.add_argument("--passage-max-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--st-mode", choices=("auto", "trainer", "loop"), default="auto",
                        help="sentence-transformers trainer (needs `datasets`) or a plain loop")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--memory-batch-size", type=int, default=2)
    parser.add_argument("--memory-layers", type=int, default=12)
    parser.add_argument("--memory-hidden", type=int, default=768)
    parser.add_argument("--memory-vocab", type=int, default=40000)
    parser.add_argument("--memory-query-max-len", type=int, default=32)
    parser.add_argument("--memory-passage-max-len", type=int, default=128)
    parser.add_argument("--memory-gradient-checkpointing", action="store_true",
                        help="every memory run checkpoints activations (QLoRA's usual setting)")
    args = parser.parse_args()
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in (args.parts or PARTS)]
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be >= 1")

    report = {"benchmark": "train", "date": datetime.now(timezone.utc).isoformat(),
              "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "threads": args.threads, "versions": versions(VERSIONED)}
    if "throughput" in parts:
        report["throughput"] = throughput(args)
    if "memory" in parts:
        report["memory"] = memory(args)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_train.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
