#!/usr/bin/env bash
# The peer environment of benchmarks/bench_backends.py: sentence-transformers with its ONNX and
# OpenVINO backends (optimum), and fastembed, in a venv of their own. optimum-onnx pins
# transformers < 4.58 and the newest optimum-intel wants a newer torch, neither of which the
# project venv can take (torch stays at 2.13.0 there), so they live here instead.
#
#   bash benchmarks/peer_env.sh [VENV]     # default: benchmarks/results/peer-venv (git-ignored)
#
# Versions: the set pip resolved for "torch==2.13.0 sentence-transformers[onnx,openvino]
# fastembed datasets" on 2026-12-03, pinned so a rerun measures the same code. datasets is
# for export_static_quantized_openvino_model (its calibration set, a local folder here);
# huggingface-hub < 1.0 because transformers 4.57 needs it (datasets alone pulls 2.x).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-benchmarks/results/peer-venv}"
PYTHON="${PYTHON:-python3.11}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q \
    "torch==2.13.0" \
    "transformers==4.57.6" \
    "sentence-transformers[onnx,openvino]==5.7.0" \
    "optimum==2.1.0" "optimum-onnx[onnxruntime]==0.1.0" "optimum-intel[openvino]==1.27.0" \
    "onnxruntime==1.32.0" "openvino==2026.4.1" "nncf==3.4.0" \
    "fastembed==0.9.1" \
    "datasets==5.0.1" "huggingface-hub==0.36.2"
"$VENV/bin/pip" check
"$VENV/bin/python" -c "import sentence_transformers, optimum.onnxruntime, optimum.intel, fastembed, torch; \
print('peer venv ready:', '$VENV', 'sentence-transformers', sentence_transformers.__version__, 'torch', torch.__version__)"
