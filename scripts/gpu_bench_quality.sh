#!/usr/bin/env bash
# benchmarks/bench_quality.py on a GPU machine that is bare and offline: SciFact train -> test,
# every row in one run on the GPU. Needs .gpu-check/ from `make gpu-check-pack` (bitsandbytes,
# the fp16 MiniLM pack, scifact.tar.xz), carried along:
#   run(command="bash scripts/gpu_bench_quality.sh --only base,default,st-mnrl-hard",
#       carry=[".gpu-check"], timeout_s=...)
# Arguments go to bench_quality.py. The MiniLM is the pack's, restored to fp32 (its weights
# within fp16 rounding of the original), put in a Hugging Face cache where embedrag resolves
# sentence-transformers/all-MiniLM-L6-v2 offline, so `embedrag train` with no --model finds it.
# Results: $OUT/bench-quality.tar.gz (every row's JSON and logs, no weights) and
# $OUT/bench_quality.json when the run ends; BENCH_SECONDS (default 300) bounds it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

source scripts/gpu_env.sh
gpu_python
WORK=${GPU_BENCH_WORK:-/tmp/embedrag-gpu-bench}
OUT_DIR=${OUT:-$ROOT/benchmarks/results}
mkdir -p "$WORK/run" "$OUT_DIR"
gpu_pythonpath "$WORK/site" "$WORK/src"
export HF_HUB_CACHE="$WORK/hub"

repo="$HF_HUB_CACHE/models--sentence-transformers--all-MiniLM-L6-v2"
revision=0000000000000000000000000000000000000000
if [[ ! -f "$repo/snapshots/$revision/config.json" ]]; then
    mkdir -p "$repo/refs" "$repo/snapshots"
    "$PY" benchmarks/gpu_check.py --unpack-model .gpu-check/all-MiniLM-L6-v2-fp16.tar.gz "$repo/snapshots/$revision"
    printf '%s' "$revision" > "$repo/refs/main"
fi
[[ -d "$WORK/scifact" ]] || tar -xJf .gpu-check/scifact.tar.xz -C "$WORK"

status=0
rm -f "$ROOT/benchmarks/results/bench_quality.json"  # a run cut short must not return an older table
# From an empty folder: `python -m embedrag` puts the working folder on the path.
(cd "$WORK/run" && PYTHONUNBUFFERED=1 timeout -k 10 "${BENCH_SECONDS:-300}" "$PY" "$ROOT/benchmarks/bench_quality.py" \
    --scifact "$WORK/scifact" --workdir "$WORK/bq" "$@") || status=$?
(cd "$WORK" && find bq \( -name '*.json' -o -name '*.log' \) -print0 | tar -czf "$OUT_DIR/bench-quality.tar.gz" --null -T -)
[[ -f "$ROOT/benchmarks/results/bench_quality.json" && "$OUT_DIR" != "$ROOT/benchmarks/results" ]] \
    && cp "$ROOT/benchmarks/results/bench_quality.json" "$OUT_DIR/"
echo "gpu_bench_quality.sh: bench_quality.py ended with status $status; results in $OUT_DIR"
exit 0
