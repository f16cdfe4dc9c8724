# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
APT_PACKAGES = espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox fortunes wordnet-base

.PHONY: all setup system-deps demo demo-quick test lint bench clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, so nothing later pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed system-deps

system-deps:
	@bash scripts/system-deps.sh $(APT_PACKAGES)

demo: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/kdstore demo --workdir demo-run

demo-quick: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/kdstore demo --workdir demo-run-quick --quick

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check kdstore cli tests bench

bench: setup
	$(PY) bench/rnnt_loss.py --out docs/benchmarks.md

clean:
	rm -rf demo-run demo-run-quick .pytest_cache
