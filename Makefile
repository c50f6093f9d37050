# picoseg: `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test lint format bench check-wheel clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Train the default run (PiCo fine-tuning an ImageNet-pretrained EfficientNet-Lite0 on the
## embedded `scenes` dataset, sized for a 2-core CPU);
## extra Hydra overrides in ARGS.
train: $(STAMP)
	$(BIN)/python -m picoseg.train experiment=lite0_scenes_pico $(ARGS)

## The test suite, offline (HF_HUB_OFFLINE=1: timm never reaches the hub).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check picoseg tests scripts
	$(BIN)/ruff format --check picoseg tests scripts

format: $(STAMP)
	$(BIN)/ruff format picoseg tests scripts
	$(BIN)/ruff check --fix picoseg tests scripts

## Build the wheel, install it (not editable) into a fresh virtual environment, and from a folder
## outside the clone train a smoke run and evaluate it with the console commands.
check-wheel: $(STAMP)
	SHARED_VENV=$(abspath $(VENV)) bash scripts/check_wheel.sh

bench: $(STAMP)
	$(BIN)/python scripts/bench_contrast.py

clean:
	rm -rf outputs multirun .pytest_cache
