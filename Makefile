# Two commands for a fresh machine: `make demo` and `make test`. Each sets up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-slow install checkpoints benchmark clean

install: $(STAMP)

# Re-install only when the package metadata changes, so repeated runs are quick.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q

# Long quality checks (trained-model quality gates); not part of `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
