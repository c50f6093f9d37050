# picoseg: `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Train the default run (PiCo on the embedded `scenes` dataset, sized for a 2-core CPU);
## extra Hydra overrides in ARGS.
train: $(STAMP)
	$(BIN)/python -m picoseg.train experiment=scenes_pico $(ARGS)

## The test suite, offline.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check picoseg tests scripts
	$(BIN)/ruff format --check picoseg tests scripts

format: $(STAMP)
	$(BIN)/ruff format picoseg tests scripts
	$(BIN)/ruff check --fix picoseg tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench_contrast.py

clean:
	rm -rf outputs multirun .pytest_cache
