# Every target creates the virtual environment when it is missing, so on a fresh machine
# `make demo` and `make test` are the only commands a user types.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SHARDS := shards/eventworld

.PHONY: venv demo test test-all lint bench bench-quality clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m align.demo --shards $(DEMO_SHARDS) --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" --timeout 3600

lint: $(STAMP)
	$(BIN)/ruff check align data_gen tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/perf_eventworld.py
	$(BIN)/python benchmarks/perf_ot.py
	$(BIN)/python benchmarks/perf_describe.py
	$(BIN)/python benchmarks/perf_index.py
	$(BIN)/python benchmarks/perf_train.py
	$(BIN)/python benchmarks/perf_loader.py

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf runs $(DEMO_SHARDS) .pytest_cache .ruff_cache
