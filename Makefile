# Two commands for a fresh machine: `make demo` and `make test`. Each sets up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-slow lint install checkpoints checkpoints-dtb checkpoints-fit checkpoints-diffusion benchmark benchmark-speed clean

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

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Long quality checks (trained-model quality gates); not part of `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Reproduce every shipped model from its recipe (training/recipes/*.yaml, docs/training.md): about 11 hours, one
# stage after another on one thread; outputs in outputs/checkpoints/, then copied into vdiffdeblur/checkpoints/.
# A finished stage is skipped on a rerun; `$(PY) scripts/reproduce.py all --dry-run` prints every command.
REPRODUCE := $(PY) scripts/reproduce.py

checkpoints: checkpoints-dtb checkpoints-fit checkpoints-diffusion

# STRCNN+DTB and its CNN comparison model, nine stages each (~4 h + ~3 h; docs/dtb.md)
checkpoints-dtb: $(STAMP)
	$(REPRODUCE) dtb

# the MAML initialisation of the fit-to-test-data method, six stages (~3.5 h; docs/fit.md)
checkpoints-fit: $(STAMP)
	$(REPRODUCE) fit

# the small diffusion deblurrer: VAE, starting pipeline, stages 1 and 2, shipping (~35 min; docs/training.md)
checkpoints-diffusion: $(STAMP)
	$(REPRODUCE) diffusion

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py

# fps, peak memory, the guard's and decode/encode's shares of every method at 640x480, 1080p and 4K (docs/benchmarks.md,
# section Speed); a quick run: $(PY) scripts/benchmark_speed.py --methods transfer dtb --sizes 640x480 --frames 8
benchmark-speed: $(STAMP)
	$(PY) scripts/benchmark_speed.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
