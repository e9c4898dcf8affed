#!/usr/bin/env bash
# What the GPU check (benchmarks/gpu_check.py) carries to the GPU machine, which is bare and
# offline: its image has Python 3.12, torch, transformers, peft, accelerate,
# sentence-transformers and the rest of embedrag's needs, but not bitsandbytes. Written into
# the git-ignored .gpu-check/, sent with `run(..., carry=[".gpu-check"])`:
#   wheels/bitsandbytes-*.whl        the version this checkout is tested with, trimmed to the
#                                    CPU and CUDA 13 libraries (the image's torch is CUDA 13)
#   all-MiniLM-L6-v2-fp16.tar.gz     the bundled MiniLM with fp16 weights (half its 91 MB)
#   scifact.tar.xz                   what scripts/gpu_bench_quality.sh needs of ../shared's
#                                    SciFact (corpus, queries, test qrels, train.jsonl): 2.5 MB
# A device run carries 64 MiB in all, the checkout's own files included; this script fails
# when the two together pass LIMIT_MIB.
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=.gpu-check
VENV_PY=${VENV_PY:-.venv/bin/python}
LIMIT_MIB=${LIMIT_MIB:-58}
# CUDA versions whose bitsandbytes library is kept (libbitsandbytes_cudaNNN.so).
KEEP_CUDA=${KEEP_CUDA:-130,132}

BNB_VERSION=$("$VENV_PY" -c 'from importlib.metadata import version; print(version("bitsandbytes"))')
rm -rf "$PACK/wheels"
mkdir -p "$PACK/wheels"
# Only wheels for the GPU image (CPython 3.12, manylinux x86_64); --no-deps: torch, numpy and
# packaging, bitsandbytes' dependencies, are already there.
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$PACK/wheels" "bitsandbytes==$BNB_VERSION"
for wheel in "$PACK"/wheels/bitsandbytes-*.whl; do
    "$VENV_PY" benchmarks/gpu_check.py --trim-wheel "$wheel" "$KEEP_CUDA"
done
HF_HUB_OFFLINE=1 "$VENV_PY" benchmarks/gpu_check.py --pack-model auto "$PACK/all-MiniLM-L6-v2-fp16.tar.gz"
SCIFACT=${SCIFACT:-../shared/datasets/scifact}
if [[ -f "$SCIFACT/train.jsonl" ]]; then
    staging=$(mktemp -d)
    mkdir -p "$staging/scifact/qrels"
    cp "$SCIFACT"/{corpus,queries,train}.jsonl "$staging/scifact/"
    cp "$SCIFACT/qrels/test.tsv" "$staging/scifact/qrels/"
    tar -cJf "$PACK/scifact.tar.xz" -C "$staging" scifact
    rm -rf "$staging"
else
    echo "no SciFact at $SCIFACT: scripts/gpu_bench_quality.sh will not run (gpu_check.sh does)" >&2
fi

pack_bytes=$(find "$PACK" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total_mib=$(( (pack_bytes + tree_bytes) / 1048576 ))
find "$PACK" -type f -printf '%10s  %p\n'
echo "pack $(( pack_bytes / 1048576 )) MiB + checkout $(( tree_bytes / 1048576 )) MiB = ${total_mib} MiB (limit ${LIMIT_MIB} MiB)"
if (( total_mib > LIMIT_MIB )); then
    echo "too large to carry: the device run takes 64 MiB in all" >&2
    exit 1
fi
