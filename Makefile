# The two set-up commands of the README: `make demo` and `make test`.
# Both create or reuse .venv and install what they need first.
VENV ?= .venv
BIN := $(VENV)/bin
# Nothing here downloads models: the demo and the tests use the bundled
# all-MiniLM-L6-v2 and tiny models built on the fly.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast browser lint docs build clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(BIN)/embedrag demo --workdir embedrag-demo

test: setup browser
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The browser test needs Chromium; installed from Debian's packages when missing.
browser:
	@bash scripts/install_browser.sh

lint: setup
	$(BIN)/ruff check embedrag tests benchmarks scripts

# docs/cli.md, the CLI reference, is generated from the commands' --help;
# tests/test_cli_docs.py fails when it is out of date.
docs: setup
	$(BIN)/python -m typer embedrag.cli utils docs --name embedrag --output docs/cli.md

build: setup
	$(BIN)/python -m build

clean:
	rm -rf build dist *.egg-info .pytest_cache

# What the GPU check carries to a bare, offline GPU machine (bitsandbytes wheel, fp16 MiniLM)
# into the git-ignored .gpu-check/; then: run "bash scripts/gpu_check.sh" with carry [".gpu-check"].
.PHONY: gpu-check-pack
gpu-check-pack: setup
	@bash scripts/pack_gpu_check.sh
