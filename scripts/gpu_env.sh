# Sourced by scripts/gpu_check.sh and scripts/gpu_bench_quality.sh, run from the checkout's
# root on a GPU machine that is bare and offline.

# gpu_python: sets PY to the image's Python with torch (PYTHON=... to choose).
gpu_python() {
    PY=${PYTHON:-}
    if [[ -z "$PY" ]]; then
        local candidate
        for candidate in python3 python; do
            if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
                PY=$candidate
                break
            fi
        done
    fi
    PY=${PY:-python3}
}

# gpu_pythonpath SITE SRC: the carried wheels (.gpu-check/wheels) installed into SITE, this
# checkout's embedrag linked into SRC, both put first on PYTHONPATH. Not the checkout's root:
# its datasets/ folder would pass for Hugging Face's datasets package, which
# sentence-transformers probes.
gpu_pythonpath() {
    local site=$1 src=$2 wheels wheel
    shopt -s nullglob
    wheels=(.gpu-check/wheels/*.whl)
    shopt -u nullglob
    if (( ${#wheels[@]} )); then
        mkdir -p "$site"
        if "$PY" -m pip --version >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$site" "${wheels[@]}"
        else  # no pip in the image: a wheel is a zip of its installed files
            for wheel in "${wheels[@]}"; do "$PY" -m zipfile -e "$wheel" "$site"; done
        fi
    else
        echo "no wheels in .gpu-check/wheels (make gpu-check-pack); qlora needs bitsandbytes" >&2
    fi
    mkdir -p "$src"
    ln -sfn "$PWD/embedrag" "$src/embedrag"
    export PYTHONPATH="$site:$src${PYTHONPATH:+:$PYTHONPATH}"
    export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
}
