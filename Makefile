# Two entry points for a fresh machine: `make demo` (the closed loop) and `make test` (the suite).
# Both create the virtualenv and install what they need. torch is pinned to the CPU build on disk.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/reloop demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check reloop_service tests migrations
	$(BIN)/ruff format --check reloop_service tests
	$(BIN)/mypy reloop_service

test: install
	bash scripts/test.sh

bench: install
	$(BIN)/reloop bench train
	$(BIN)/reloop bench serve

clean:
	rm -rf $(VENV) reloop-data test-artifacts
