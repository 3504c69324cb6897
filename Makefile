# The README's commands. Each target creates .venv and installs the project first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo test lint bench clean model agentdojo-replay

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The HTTP service on the embedded default (SQLite under .risk, in-process state); it prints where to look.
run: $(BIN)/.installed
	$(BIN)/risk serve

demo: $(BIN)/.installed
	$(BIN)/risk demo

lint: $(BIN)/.installed
	$(BIN)/ruff check risk api tests bench examples
	$(BIN)/ruff format --check risk api tests bench examples
	$(BIN)/mypy risk api

test: lint
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_guard.py
	$(BIN)/python bench/bench_forest.py
	$(BIN)/python bench/bench_decision.py
	$(BIN)/python bench/bench_watch.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_scan.py
	$(BIN)/python bench/bench_service.py
	$(BIN)/python bench/bench_service_layers.py

clean:
	rm -rf $(VENV) .risk .pytest_cache .mypy_cache .ruff_cache

# The shipped default model, trained reproducibly on synthetic benign history made by data/synthetic.py.
model: $(BIN)/.installed
	$(BIN)/python data/synthetic.py --out build/synthetic --seed 7 --scale 1
	$(BIN)/risk train build/synthetic/train.jsonl --out models --name default --version 5 --seed 0 \
		--evaluate build/synthetic/test.jsonl --force

# The AgentDojo banking and slack test traces replayed under the policies of examples/agentdojo_replay.
agentdojo-replay: $(BIN)/.installed
	$(BIN)/python examples/agentdojo_replay/replay.py --out build/agentdojo-replay
