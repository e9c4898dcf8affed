#!/usr/bin/env bash
# Create (or reuse) .venv and install embedrag with its dev extra.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first: a bare
# torch requirement would otherwise pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_PIN="torch==2.13.0"
STAMP="$VENV/.embedrag-installed"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the project metadata changed since the last install.
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi

"$VENV/bin/python" -m pip install --quiet --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "==> NVIDIA GPU found: installing $TORCH_PIN (CUDA build)"
    "$VENV/bin/python" -m pip install --quiet "$TORCH_PIN"
  else
    echo "==> no NVIDIA GPU: installing $TORCH_PIN (CPU build)"
    # PyPI's Linux torch is the CUDA build; the CPU build lives on PyTorch's own index.
    # Where that index cannot be reached (an offline mirror that carries the CPU wheel),
    # the plain pin is used.
    CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    if "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
        "$CPU_INDEX/" >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip install --quiet "$TORCH_PIN" --extra-index-url "$CPU_INDEX"
    else
      "$VENV/bin/python" -m pip install --quiet "$TORCH_PIN"
    fi
  fi
fi
echo "==> installing embedrag[dev]"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
touch "$STAMP"
