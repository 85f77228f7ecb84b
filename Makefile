# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow test-all bench lint docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## train the built-in digits MLP (cached) and report its Hessian's extreme eigenvalues
	$(VENV)/bin/hessian-tools demo

test: $(STAMP)  ## the default test suite (CI runs this)
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile -q --durations=15

test-slow: $(STAMP)  ## the slow tests only
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)  ## peers for side-by-side benchmarks: torch 2.13.0 (CPU), PyHessian, ...
	$(PY) -m pip install -q -e '.[dev,compare]'
	$(PY) benchmarks/peers/bench_eigs.py

docs: $(STAMP)  ## the reference documentation (API from the docstrings, notebooks), warnings as errors
	$(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)  ## pyflakes-level checks (undefined and unused names)
	$(VENV)/bin/ruff check --select F hessian_tools tests benchmarks

clean:
	rm -rf $(VENV) hessian_tools_out .pytest_cache site
