# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
APT_PACKAGES = espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox fortunes wordnet-base sctk

.PHONY: all setup system-deps demo demo-quick test test-fast lint bench clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, so nothing later pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed system-deps

# Debian packages for the TTS corpus: installed when missing and we are root, else we say what to run.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing system packages:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "kdstore needs these system packages:$$missing" >&2; \
	    echo "Install them with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

demo: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/kdstore demo --workdir demo-run

demo-quick: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/kdstore demo --workdir demo-run-quick --quick

# Two pytest-xdist workers (the 2-core CI machine); each builds its own session fixtures.
test: setup
	$(PY) -m pytest -q -n 2 tests

# The inner loop: no TTS engine, nothing trained, under a minute.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check kdstore cli tests bench

bench: setup
	$(PY) bench/rnnt_loss.py --out docs/benchmarks.md

clean:
	rm -rf demo-run demo-run-quick .pytest_cache
