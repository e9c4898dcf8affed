#!/usr/bin/env bash
# The GPU check on a GPU machine that is bare and offline (benchmarks/gpu_check.py says what
# it proves). Needs .gpu-check/ from `make gpu-check-pack`, carried along:
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu-check"], timeout_s=420)
# Extra arguments go to gpu_check.py (e.g. --only train,memory). Results: $OUT/gpu-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

# The image's Python with torch (PYTHON=... to choose).
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
            PY=$candidate
            break
        fi
    done
fi
PY=${PY:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/embedrag-gpu-check/site}
SRC=${GPU_CHECK_SRC:-/tmp/embedrag-gpu-check/src}
# The last resort behind the check's own budget (330 s of stages).
TOTAL_SECONDS=${GPU_CHECK_TIMEOUT:-360}

shopt -s nullglob
wheels=(.gpu-check/wheels/*.whl)
if (( ${#wheels[@]} )); then
    mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}"
    else  # no pip in the image: a wheel is a zip of its installed files
        for wheel in "${wheels[@]}"; do "$PY" -m zipfile -e "$wheel" "$SITE"; done
    fi
else
    echo "gpu_check.sh: no wheels in .gpu-check/wheels (make gpu-check-pack); qlora needs bitsandbytes" >&2
fi
# embedrag from this checkout, without the checkout's root on the path: its datasets/ folder
# would pass for Hugging Face's datasets package, which sentence-transformers probes.
mkdir -p "$SRC"
ln -sfn "$PWD/embedrag" "$SRC/embedrag"
export PYTHONPATH="$SITE:$SRC${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

timeout -k 10 "$TOTAL_SECONDS" "$PY" benchmarks/gpu_check.py --device cuda "$@" || {
    status=$?
    echo "gpu_check.sh: gpu_check.py ended with status $status; finished stages are in ${OUT:-benchmarks/results}/gpu-check" >&2
}
exit 0
