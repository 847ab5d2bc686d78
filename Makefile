# Two commands a new user runs: `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install the pinned requirements into it first; re-running is cheap.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU threads for torch: the machines here have 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: venv test test-slow test-all demo lint bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --timeout 600 -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow --timeout 1800 -q

test-all: $(STAMP)
	$(PY) -m pytest --timeout 1800 -q

demo: $(STAMP)
	$(PY) tools/run_demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check resnet_backbone tools tests

BENCH_STAMP := $(VENV)/.installed-bench

# the benchmark's extra reference (docTR), without its declared dependencies: see requirements-bench.txt
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) tools/benchmark.py --output-dir output/benchmark

clean:
	rm -rf $(VENV) output build *.egg-info
