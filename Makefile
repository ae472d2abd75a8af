# vlm-sft: `make quickstart` and `make test` set everything up from nothing (venv, dependencies,
# tiny model, data). No network is needed beyond the package index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before anything else so no dependency pulls a CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
LAUNCH := $(BIN)/accelerate launch --quiet --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: setup quickstart readme-figures test lint format bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Build the tiny model and the digits, train with the real command, score base vs adapter.
quickstart: $(STAMP)
	$(BIN)/vlm-sft quickstart prepare
	$(LAUNCH) scripts/sft_vlm.py recipes/quickstart.yaml
	$(BIN)/vlm-sft quickstart report

# The same, then the README's quickstart figures rewritten from this run (kept in docs/quickstart_result.json).
readme-figures: $(STAMP)
	$(BIN)/vlm-sft quickstart prepare
	$(LAUNCH) scripts/sft_vlm.py recipes/quickstart.yaml
	$(BIN)/vlm-sft quickstart report --update-readme

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The CPU benchmarks, side by side in one run each (numbers in benchmarks/README.md). The memory
# check runs the three model sizes in both modes (RSS only; add --tensors --glibc for every column).
bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py --json benchmarks/results/train_throughput.json
	$(BIN)/python benchmarks/collator_throughput.py --json benchmarks/results/collator.json
	$(BIN)/python benchmarks/measure_memory.py --json benchmarks/results/memory.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf .cache outputs .pytest_cache
