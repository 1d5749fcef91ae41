# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-arviz1 lint install clean mutate docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU wheel that ships on this machine kind
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,atari,control,data,docs,tensorboard,graph]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bjepa noisy-tv --quick --out runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# files bjepa writes, read by ArviZ >= 1.3 under Python >= 3.12 (venv built once in ~/.cache)
test-arviz1: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_arviz_compat.py

# mutation testing of the core numerical modules, on demand (about an hour on 2 cores; not in CI):
# works in a separate clone of HEAD with its own venv, since cosmic-ray mutates files in place
mutate: $(STAMP)
	$(PY) mutation/run.py $(MUTATE_ARGS)

# the documentation site (build/docs/html/index.html): Sphinx with warnings as errors; the
# tutorials in docs/tutorials/ are executed and their outputs cached in build/docs/jupyter_cache
docs: $(STAMP)
	$(PY) -m sphinx -b html -c docs -W --keep-going . build/docs/html
	@echo "open build/docs/html/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
