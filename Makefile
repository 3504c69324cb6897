# The README's commands. Each target creates .venv and installs the project first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean model

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/risk demo

lint: $(BIN)/.installed
	$(BIN)/ruff check risk api tests bench
	$(BIN)/ruff format --check risk api tests bench
	$(BIN)/mypy risk

test: lint
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_guard.py
	$(BIN)/python bench/bench_forest.py
	$(BIN)/python bench/bench_decision.py

clean:
	rm -rf $(VENV) .risk .pytest_cache .mypy_cache .ruff_cache

# The shipped default model, trained reproducibly on synthetic benign history made by data/synthetic.py.
model: $(BIN)/.installed
	$(BIN)/python data/synthetic.py --out build/synthetic --seed 7 --scale 1
	$(BIN)/risk train build/synthetic/train.jsonl --out models --name default --version 1 --seed 0
