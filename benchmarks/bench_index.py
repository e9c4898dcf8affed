"""LanceDB at 100k synthetic 384-d rows: ingest rows/s, ANN build time, exact vs ANN query
p50/p95 latency and ANN recall@10 against exact search.

What it measures is embedrag's own storage path, minus the encoder: the table is created
with ``store._schema`` (embedrag's columns and schema metadata), rows are made by
``store._rows`` from ``Document`` objects and written with ``handle.add`` in batches of
``build_index``'s default ``batch_documents`` (256; one chunk per synthetic document), the
ANN index is built by ``store._maybe_ann(handle, "auto", rows)`` (IVF_HNSW_SQ, cosine, from
``ANN_AUTO_THRESHOLD`` rows) and every query goes through ``store.vector_search`` with its
defaults (HNSW ``ef`` ``ANN_EF`` or LanceDB's, ``refine_factor`` ``ANN_REFINE_FACTOR``:
that many times k candidates re-scored exactly), i.e. what ``embedrag search`` runs after encoding the question. Encoding and the full-text index are left out (they are not storage costs).

Exact search is the same ``vector_search`` call on the table before the ANN index exists
(LanceDB then scans every row, flat, cosine); it is cross-checked against numpy. Recall@10 =
|ANN top-10 & exact top-10| / 10, averaged over the queries.

Synthetic vectors: pure uniform random unit vectors have no neighbourhood structure (every
point is about equally far from every other) and make ANN look needlessly bad, so rows are
a mixture of Gaussians closer to real sentence embeddings: ``--clusters`` unit centres with
log-normal cluster sizes; each point is its centre plus a displacement in a 32-d subspace
of its own cluster (low intrinsic dimension, as real embeddings have) plus a little
isotropic noise, then normalised. Queries are held-out draws from the same distribution.
A sweep (``--no-sweep`` to skip) queries the index directly with other refine_factor /
ef / nprobes settings to show the trade-off; then the table is compacted (``optimize()``,
``--no-compact`` to skip), since ``build_index`` leaves one fragment per batch, and ANN and
flat (``bypass_vector_index()``) search are timed again. The load average is recorded:
latencies on a shared machine are only as good as its idleness. About 4-7 minutes on 2
cores, most of it the IVF_HNSW_SQ build.

    .venv/bin/python benchmarks/bench_index.py [--rows 100000] [--queries 200] [--no-sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

K = 10
GOAL_RECALL = 0.95
GOAL_P50_MS = 20.0


def synthetic_vectors(rng: np.random.Generator, n: int, dim: int, clusters: int,
                      local_dim: int = 32, spread: float = 0.8, noise: float = 0.3) -> np.ndarray:
    """Clustered unit vectors (see the module docstring)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, clusters)
    labels = rng.choice(clusters, n, p=weights / weights.sum())
    x = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
    for k in range(clusters):
        idx = order[bounds[k]:bounds[k + 1]]
        if idx.size:
            basis = rng.standard_normal((local_dim, dim)).astype(np.float32) / np.sqrt(dim)
            z = rng.standard_normal((idx.size, local_dim)).astype(np.float32) * (spread / np.sqrt(local_dim))
            x[idx] += z @ basis
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(queries: np.ndarray, search: Callable[[np.ndarray], list[str]],
          warmup: np.ndarray) -> tuple[list[float], list[list[str]]]:
    for q in warmup:
        search(q)
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        ids = search(q)
        times.append((time.perf_counter() - start) * 1000)
        results.append(ids)
    return times, results


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


def recall_at_k(approx: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a[:K]) & set(e[:K])) / K for a, e in zip(approx, exact)]))


def store_ann_kinds() -> tuple[str, ...]:
    from embedrag.engine.retrieval.store import ANN_KINDS

    return ANN_KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256,
                        help="Rows per table.add (build_index's batch_documents, one chunk each).")
    parser.add_argument("--text-chars", type=int, default=400, help="Length of each row's text.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ann", default="auto", choices=store_ann_kinds(),
                        help="Passed to store._maybe_ann (auto: what build_index does).")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument("--no-compact", dest="compact", action="store_false",
                        help="Skip re-measuring after table.optimize() (compaction).")
    parser.add_argument("--db", help="Keep the LanceDB here instead of a temporary folder.")
    args = parser.parse_args()
    os.environ["LANCEDB_LOG"] = "error"
    import lancedb
    import pyarrow as pa

    import embedrag
    from embedrag.engine.data.documents import Document
    from embedrag.engine.retrieval import store

    rng = np.random.default_rng(args.seed)
    started_all = time.perf_counter()
    load_before = os.getloadavg()
    vectors = synthetic_vectors(rng, args.rows + args.queries + args.warmup, args.dim, args.clusters)
    queries = vectors[args.rows:args.rows + args.queries]
    warmup = vectors[args.rows + args.queries:]
    vectors = vectors[:args.rows]
    ids = np.array([f"doc{i:07d}#0" for i in range(args.rows)])
    sims = queries @ vectors.T
    top = np.argsort(-sims, axis=1)[:, :K]
    numpy_exact = [list(ids[row]) for row in top]
    top_sims = np.take_along_axis(sims, top, axis=1)
    data_shape = {"mean_cos_top1": round(float(top_sims[:, 0].mean()), 3),
                  "mean_cos_top10": round(float(top_sims[:, K - 1].mean()), 3),
                  "mean_cos_random_pair": round(float(sims.mean()), 3)}
    del sims

    words = ("retrieval embedding vector index query passage document chunk model score "
             "lance table search cosine recall latency").split()
    filler = " ".join(rng.choice(words, args.text_chars // 4 + 8))[:args.text_chars]
    settings = store.IndexSettings(model="synthetic", fingerprint="synthetic", pooling="mean",
                                   normalize=True, query_instruction="", passage_instruction="",
                                   query_max_length=128, passage_max_length=256, dimension=args.dim,
                                   chunk_size=254, chunk_overlap=32, embedrag_version=embedrag.__version__)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db or tmp)
        db.mkdir(parents=True, exist_ok=True)
        connection = lancedb.connect(str(db))
        handle = connection.create_table("docs", schema=store._schema(args.dim, settings), mode="overwrite")

        # Ingest: build_index's flush() minus encoding (Document -> _rows -> handle.add).
        convert_s = add_s = 0.0
        start = time.perf_counter()
        for lo in range(0, args.rows, args.batch):
            hi = min(lo + args.batch, args.rows)
            t0 = time.perf_counter()
            docs = [Document(id=f"doc{i:07d}", text=filler, title=f"Document {i}", source="synthetic",
                             metadata={"n": i}) for i in range(lo, hi)]
            rows = store._rows(docs, [[d.text] for d in docs], vectors[lo:hi])
            t1 = time.perf_counter()
            handle.add(rows)
            add_s += time.perf_counter() - t1
            convert_s += t1 - t0
        ingest_s = time.perf_counter() - start
        count = handle.count_rows()
        assert count == args.rows, count
        fragments = handle.stats()["fragment_stats"]["num_fragments"]

        # build_index compacts once its rows are written (one fragment per batch otherwise).
        t0 = time.perf_counter()
        handle.optimize()
        compact_s = time.perf_counter() - t0

        def search_ids(q: np.ndarray, index_type: str | None = None) -> list[str]:
            return [hit.chunk_id for hit in store.vector_search(handle, q, K, index_type=index_type)]

        # Exact: embedrag's vector_search while the table has no index (flat scan).
        exact_times, exact = timed(queries, search_ids, warmup)
        exact_vs_numpy = recall_at_k(exact, numpy_exact)

        start = time.perf_counter()
        ann_type = store._maybe_ann(handle, args.ann, count)
        build_s = time.perf_counter() - start
        index_info: dict = {"type": ann_type}
        for config in handle.list_indices():
            stats = handle.index_stats(config.name)
            index_info.update(name=config.name, num_indexed_rows=stats.num_indexed_rows,
                              num_unindexed_rows=stats.num_unindexed_rows,
                              distance_type=stats.distance_type, num_indices=stats.num_indices)
        # vector_search calls handle.list_indices() on every query: its share of the latency.
        t0 = time.perf_counter()
        for _ in range(50):
            handle.list_indices()
        list_indices_ms = (time.perf_counter() - t0) * 1000 / 50

        has_index = store.vector_index_type(handle)  # what Retriever asks once per table
        ann_times, ann = timed(queries, lambda q: search_ids(q, has_index), warmup)
        ann_recall = recall_at_k(ann, exact)

        sweep = []
        if args.sweep and ann_type:
            columns = [*store._COLUMNS, "_distance"]
            for refine, ef, nprobes in [(None, None, None), (None, 50, None), (None, 100, None),
                                        (1, 100, None), (None, 200, None), (2, None, None),
                                        (10, None, None)]:
                def query(q: np.ndarray, refine=refine, ef=ef, nprobes=nprobes) -> list[str]:
                    search = handle.search(q.tolist()).distance_type("cosine").limit(K)
                    if refine:
                        search = search.refine_factor(refine)
                    if ef:
                        search = search.ef(ef)
                    if nprobes:
                        search = search.nprobes(nprobes)
                    return [row["chunk_id"] for row in search.select(columns).to_list()]

                times, got = timed(queries, query, warmup[:3])
                sweep.append({"refine_factor": refine, "ef": ef, "nprobes": nprobes,
                              "p50_ms": round(percentile(times, 50), 2),
                              "p95_ms": round(percentile(times, 95), 2),
                              "recall_at_10": round(recall_at_k(got, exact), 4)})
        bytes_on_disk = store._folder_size(db / "docs.lance")

        # build_index never compacts: one fragment per batch. What compaction would buy.
        compacted: dict = {}
        if args.compact and ann_type:
            start = time.perf_counter()
            handle.optimize()
            compacted["optimize_seconds"] = round(time.perf_counter() - start, 2)
            compacted["fragments"] = handle.stats()["fragment_stats"]["num_fragments"]
            times, got = timed(queries, lambda q: search_ids(q, has_index), warmup)
            compacted.update(ann_p50_ms=round(percentile(times, 50), 2),
                             ann_p95_ms=round(percentile(times, 95), 2),
                             ann_recall_at_10=round(recall_at_k(got, exact), 4))

            def flat_ids(q: np.ndarray) -> list[str]:
                search = handle.search(q.tolist()).distance_type("cosine").bypass_vector_index()
                return [row["chunk_id"] for row in search.limit(K).select(store._COLUMNS).to_list()]

            times, got = timed(queries[:50], flat_ids, warmup[:3])
            compacted.update(exact_p50_ms=round(percentile(times, 50), 2),
                             exact_p95_ms=round(percentile(times, 95), 2),
                             exact_queries=len(times))

    ann_p50 = percentile(ann_times, 50)
    default_refine = f"ef {store.ANN_EF or 'default'}, refine {store.ANN_REFINE_FACTOR}"
    figures = {
        "rows": args.rows, "dim": args.dim, "queries": args.queries, "batch_rows": args.batch,
        "fragments_after_ingest": fragments, "bytes_on_disk": bytes_on_disk,
        "ingest_seconds": round(ingest_s, 2), "ingest_rows_per_s": round(args.rows / ingest_s),
        "ingest_convert_seconds": round(convert_s, 2), "ingest_add_seconds": round(add_s, 2),
        "compact_seconds": round(compact_s, 2),
        "ann_build_seconds": round(build_s, 2), "ann_index": index_info,
        "exact_p50_ms": round(percentile(exact_times, 50), 2),
        "exact_p95_ms": round(percentile(exact_times, 95), 2),
        "exact_mean_ms": round(statistics.fmean(exact_times), 2),
        "exact_recall_vs_numpy": round(exact_vs_numpy, 4),
        "ann_refine_factor": default_refine,
        "ann_p50_ms": round(ann_p50, 2), "ann_p95_ms": round(percentile(ann_times, 95), 2),
        "ann_mean_ms": round(statistics.fmean(ann_times), 2),
        "ann_recall_at_10": round(ann_recall, 4),
        "list_indices_ms_per_query": round(list_indices_ms, 3),
    }
    goal = {"recall_at_10_min": GOAL_RECALL, "p50_ms_max": GOAL_P50_MS,
            "met": bool(ann_type) and ann_recall >= GOAL_RECALL and ann_p50 < GOAL_P50_MS}

    print(f"{args.rows} rows x {args.dim}-d, {args.clusters} clusters, {args.queries} queries "
          f"(data: mean cos top-1 {data_shape['mean_cos_top1']}, top-10 {data_shape['mean_cos_top10']}, "
          f"random pair {data_shape['mean_cos_random_pair']})")
    print(f"ingest      {ingest_s:7.1f} s  {figures['ingest_rows_per_s']:>7} rows/s  "
          f"(_rows {convert_s:.1f} s, table.add {add_s:.1f} s, {args.batch} rows/add, "
          f"{fragments} fragments, {bytes_on_disk / 2**20:.0f} MiB; compaction {compact_s:.1f} s)")
    print(f"ANN build   {build_s:7.1f} s  {ann_type}, num_indices {index_info.get('num_indices')}, "
          f"{index_info.get('num_indexed_rows', 0)} rows indexed")
    print(f"{'search':<34}{'p50 ms':>8}{'p95 ms':>8}{'recall@10':>11}")
    print(f"{'exact (flat, vector_search)':<34}{figures['exact_p50_ms']:>8.2f}{figures['exact_p95_ms']:>8.2f}"
          f"{exact_vs_numpy:>11.4f}  (vs numpy)")
    print(f"{f'ANN (vector_search, {default_refine})':<34}{figures['ann_p50_ms']:>8.2f}{figures['ann_p95_ms']:>8.2f}"
          f"{ann_recall:>11.4f}")
    for row in sweep:
        label = (f"  refine={row['refine_factor']} ef={row['ef']} nprobes={row['nprobes']}")
        print(f"{label:<34}{row['p50_ms']:>8.2f}{row['p95_ms']:>8.2f}{row['recall_at_10']:>11.4f}")
    if compacted:
        print(f"after table.optimize() ({compacted['optimize_seconds']:.1f} s, "
              f"{compacted['fragments']} fragment(s)):")
        print(f"{'  ANN (vector_search, default)':<34}{compacted['ann_p50_ms']:>8.2f}"
              f"{compacted['ann_p95_ms']:>8.2f}{compacted['ann_recall_at_10']:>11.4f}")
        print(f"{'  exact (flat, ' + str(compacted['exact_queries']) + ' queries)':<34}"
              f"{compacted['exact_p50_ms']:>8.2f}{compacted['exact_p95_ms']:>8.2f}")
    print(f"list_indices() per vector_search call: {list_indices_ms:.2f} ms")
    print(f"goal recall@10 >= {GOAL_RECALL} at p50 < {GOAL_P50_MS:.0f} ms: "
          f"{'MET' if goal['met'] else 'NOT MET'}  (total {time.perf_counter() - started_all:.0f} s)")
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) before {' '.join(f'{x:.1f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.1f}' for x in load_after)} on {os.cpu_count()} CPUs")

    report = {
        "benchmark": "bench_index", "date": datetime.now(timezone.utc).isoformat(),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in load_after]},
        "python": platform.python_version(),
        "versions": {"lancedb": lancedb.__version__, "pyarrow": pa.__version__, "numpy": np.__version__,
                     "embedrag": embedrag.__version__},
        "data": {"kind": "clustered unit vectors", "clusters": args.clusters, "seed": args.seed,
                 "text_chars": args.text_chars, **data_shape},
        "figures": figures, "sweep": sweep, "after_optimize": compacted, "goal": goal,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_index.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
