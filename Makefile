# Entry points: make demo · make test · make lint · make bench. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python examples/iris/demo.py --workdir .demo

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	command -v wrk >/dev/null || (apt-get install -y wrk || sudo apt-get install -y wrk)
	@# libb64 is only for the optional perf_analyzer step of serving.py; without it that step says why it was skipped
	ldconfig -p | grep -q libb64.so.0d || apt-get install -y libb64-0d || sudo apt-get install -y libb64-0d || true
	$(BIN)/python benchmarks/persistence.py --out docs
	$(BIN)/python benchmarks/archive.py --out docs
	$(BIN)/python benchmarks/serving.py --out docs

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
