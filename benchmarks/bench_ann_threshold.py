"""When does a LanceDB table need an ANN index? Flat (exact) search latency vs rows,
and IVF_HNSW_SQ build time, latency and recall@10 against exact search.

Random unit vectors of the bundled MiniLM's dimension (384); the table layout is
embedrag's. Prints a table and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/bench_ann_threshold.py [--rows 10000 50000 100000 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def p50_ms(table, queries, index: bool) -> tuple[float, list[list[int]]]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        search = table.search(q).metric("cosine").limit(10)
        if index:
            search = search.refine_factor(10)
        rows = search.select(["chunk"]).to_list()
        times.append((time.perf_counter() - start) * 1000)
        results.append([r["chunk"] for r in rows])
    return statistics.median(times), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--index-from", type=int, default=50_000, help="Also build IVF_HNSW_SQ from this size.")
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("LANCEDB_LOG", "error")
    import lancedb
    import pyarrow as pa

    rng = np.random.default_rng(0)
    dim = 384
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        for n in args.rows:
            vectors = rng.standard_normal((n, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            data = pa.table({"chunk": pa.array(np.arange(n, dtype=np.int32)),
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})
            table = db.create_table(f"t{n}", data=data, mode="overwrite")
            queries = vectors[rng.choice(n, args.queries, replace=False)] + 0.05 * rng.standard_normal(
                (args.queries, dim)).astype(np.float32)
            flat_ms, exact = p50_ms(table, queries, index=False)
            row = {"rows": n, "flat_p50_ms": round(flat_ms, 2)}
            if n >= args.index_from:
                start = time.perf_counter()
                table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ")
                row["hnsw_build_s"] = round(time.perf_counter() - start, 1)
                hnsw_ms, approx = p50_ms(table, queries, index=True)
                recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
                row.update(hnsw_p50_ms=round(hnsw_ms, 2), hnsw_recall_at_10=round(float(recall), 3))
            rows_out.append(row)
            print(row, flush=True)
    report = {"benchmark": "ann_threshold", "date": datetime.now(timezone.utc).isoformat(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "versions": {"lancedb": lancedb.__version__}, "rows": rows_out}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ann_threshold.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
