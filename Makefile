# The two commands a newcomer needs:
#   make run    set up .venv and run the offline default job (MiniLM teacher -> small student on BBC News)
#   make test   set up .venv and run the linters and the test suite
#   make smoke  the default job's whole journey on a small budget (a couple of minutes; not the published numbers)
# TORCH_SPEC picks the PyTorch build installed when none is importable (default: the CPU 2.13.0 wheel).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.ckadistill-installed
DEV_STAMP := $(VENV)/.ckadistill-dev-installed

.PHONY: setup setup-dev run smoke test lint format clean

# The job needs only the package; the tests add pytest, ruff, hypothesis and tensorboard (a first
# `make run` is quicker without them).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -e ".[dev,onnx]"
	touch $(DEV_STAMP)

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

run: setup
	$(BIN)/ckadistill quickstart --output_dir outputs/quickstart

smoke: setup
	$(BIN)/ckadistill quickstart --fast

test: setup-dev lint
	$(BIN)/python -m pytest

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
