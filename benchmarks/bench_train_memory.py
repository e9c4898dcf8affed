"""Peak memory of qlora-4bit vs lora vs full on one decoder model and batch.

Builds a Qwen2-style decoder of ~110M parameters from a config with random weights (no
download), then trains it for a few steps with each fine-tune type, each in its own
process so that peak memory is that run's alone. Prints a table and writes JSON next to
this script. Peak memory is CUDA max_memory_allocated on a GPU, else the process's peak
RSS (which includes Python, torch and the loaded weights).

    .venv/bin/python benchmarks/bench_train_memory.py [--steps 3] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def save_byte_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer without merges (one token per byte, plus an end token),
    for decoders built from a config; returns the end token's id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    tokens = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tokens["<|endoftext|>"] = len(tokens)
    tok = Tokenizer(models.BPE(vocab=tokens, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            model_max_length=512).save_pretrained(folder)
    return tokens["<|endoftext|>"]


def build_decoder(folder: Path, layers: int, hidden: int, vocab: int) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    eos = save_byte_tokenizer(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                         num_key_value_heads=max(1, hidden // 256), max_position_embeddings=512,
                         eos_token_id=eos, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.model.parameters())


def write_data(path: Path, rows: int = 64) -> None:
    import random

    rng = random.Random(0)
    words = "protein cell gene tumor immune receptor signal pathway mouse human blood brain".split()
    lines = []
    for i in range(rows):
        def text(n):
            return " ".join(rng.choice(words) for _ in range(n))
        lines.append(json.dumps({"query": f"q{i} " + text(12), "pos": [text(120)],
                                 "neg": [text(120), text(120)]}))
    path.write_text("\n".join(lines) + "\n")


def run_one(model: Path, data: Path, out: Path, finetune_type: str, args) -> dict:
    command = [sys.executable, "-m", "embedrag", "train", "--model", str(model),
               "--train-dataset", str(data), "--output-dir", str(out), "--finetune-type", finetune_type,
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--neg-nums", "2",
               "--query-max-len", str(args.query_max_len), "--passage-max-len", str(args.passage_max_len),
               "--no-save-on-epoch-end", *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"})
    wall = time.perf_counter() - start
    summary = json.loads((out / "training_summary_report.json").read_text())
    return {"finetune_type": finetune_type, "peak_memory_mib": summary["peak_memory_bytes"] / 2**20,
            "peak_memory_kind": summary["peak_memory_kind"],
            "trainable_parameters": summary["start"]["trainable_parameters"],
            "train_seconds": summary["wall_time_seconds"], "process_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=40000)
    parser.add_argument("--query-max-len", type=int, default=32)
    parser.add_argument("--passage-max-len", type=int, default=128)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="every run (QLoRA's usual setting)")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = build_decoder(tmp / "decoder", args.layers, args.hidden, args.vocab)
        write_data(tmp / "data.jsonl")
        rows = [run_one(tmp / "decoder", tmp / "data.jsonl", tmp / f"out-{kind}", kind, args)
                for kind in ("qlora", "lora", "full")]
    print(f"decoder: {params / 1e6:.1f}M parameters, batch {args.batch_size} queries x "
          f"{args.query_max_len} + 3 passages x {args.passage_max_len} tokens each, {args.steps} steps")
    print(f"{'type':<8} {'peak MiB':>10} {'trainable':>12} {'train s':>9}")
    for row in rows:
        print(f"{row['finetune_type']:<8} {row['peak_memory_mib']:>10.0f} "
              f"{row['trainable_parameters']:>12,} {row['train_seconds']:>9.1f}")
    ordered = rows[0]["peak_memory_mib"] < rows[1]["peak_memory_mib"] < rows[2]["peak_memory_mib"]
    print(f"qlora-4bit < lora < full: {ordered}")
    report = {
        "benchmark": "train_memory", "date": datetime.now(timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"torch": torch.__version__},
        "model_parameters": params, "args": vars(args), "rows": rows, "ordered": ordered,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_memory.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
