# Two set-up commands: `make run` (install + main job on the mini world) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/mini
WORKERS ?= 2
ARGS ?=

$(BIN)/pulse: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/pulse

install: $(BIN)/pulse

run: install
	$(BIN)/pulse run $(ARGS) --out $(OUT) --launcher local --workers $(WORKERS)

test: install
	$(BIN)/python -m pytest -q tests

.PHONY: install run test
