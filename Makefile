# One entry point for people and CI. `make setup` is idempotent: it re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medsemi-installed
DEMO_RUN := runs/demo

.PHONY: setup demo test lint data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,onnx]'
	touch $(STAMP)

demo: setup
	$(BIN)/medsemi train configs/demo/mean_teacher.yaml --overwrite run.dir=$(DEMO_RUN)
	$(BIN)/medsemi evaluate $(DEMO_RUN) --split test

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

data: setup
	$(BIN)/python ../shared/data/unpack.py .cache/data

clean:
	rm -rf $(VENV) .cache runs
