#!/usr/bin/env bash
# The GPU check on a GPU machine that is bare and offline (benchmarks/gpu_check.py says what
# it proves). Needs .gpu-check/ from `make gpu-check-pack`, carried along:
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu-check"], timeout_s=420)
# Extra arguments go to gpu_check.py (e.g. --only train,memory). Results: $OUT/gpu-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/gpu_env.sh
gpu_python
# The last resort behind the check's own budget (330 s of stages).
TOTAL_SECONDS=${GPU_CHECK_TIMEOUT:-360}
gpu_pythonpath "${GPU_CHECK_SITE:-/tmp/embedrag-gpu-check/site}" "${GPU_CHECK_SRC:-/tmp/embedrag-gpu-check/src}"

timeout -k 10 "$TOTAL_SECONDS" "$PY" benchmarks/gpu_check.py --device cuda "$@" || {
    status=$?
    echo "gpu_check.sh: gpu_check.py ended with status $status; finished stages are in ${OUT:-benchmarks/results}/gpu-check" >&2
}
exit 0
