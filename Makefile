# Packaging and docs (CI runs all of these through `bash scripts/test`):
#   make dist         sdist + wheel in dist/, checked with `twine check --strict`
#   make wheel-smoke  the wheel installed alone (no extras) in a fresh venv, then used
#   make docs         the docs site into site/, strict (broken references fail)
#   make docs-serve   the docs site on http://127.0.0.1:8000, rebuilt on change
#   make test         bash scripts/test (everything CI runs)
#
# Benchmarks and soak (not part of CI, which runs `bash scripts/test`).
#   make bench        elevenconv vs the official SDK, full run (~6 min), results in benchmarks/results/
#   make bench-quick  the same at tiny sizes (~30 s); what tests/test_bench_smoke.py runs
#   make soak         30 minutes of voice conversations with random faults (SOAK_MINUTES=N)
# Each target creates/updates the venv with the extras it needs. System packages
# (portaudio19-dev, pulseaudio, pulseaudio-utils, libasound2-plugins) as for scripts/test.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SOAK_MINUTES ?= 30

.PHONY: bench bench-quick soak venv-bench venv-dev dist wheel-smoke docs docs-serve test

$(PY):
	$(PYTHON) -m venv $(VENV)

venv-bench: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[audio,testing,dev,bench]"

bench: venv-bench
	$(PY) benchmarks/run.py

bench-quick: venv-bench
	$(PY) benchmarks/run.py --quick

soak: venv-bench
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES)

venv-dev: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[audio,testing,dev,docs]"

dist: venv-dev
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

wheel-smoke: dist
	bash scripts/wheel-smoke

docs: venv-dev
	$(VENV)/bin/mkdocs build --strict -d site

docs-serve: venv-dev
	$(VENV)/bin/mkdocs serve

test:
	bash scripts/test
