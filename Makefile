# edgeship: `make demo` and `make test` each do their own set-up on a fresh machine.
# Installs go into .venv/ (git-ignored); a stamp keyed on pyproject.toml makes a
# second run skip them.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
EDGESHIP := $(VENV)/bin/edgeship
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DIGITS := examples/digits/build
DEMO := build/demo

.PHONY: demo test lint install clean

$(VENV)/bin/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update && apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[convert,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

$(DIGITS)/digits.keras: examples/digits/train.py | $(STAMP)
	$(PY) examples/digits/train.py --out $(DIGITS)

demo: $(STAMP) $(DIGITS)/digits.keras
	$(EDGESHIP) convert $(DIGITS)/digits.keras --recipe int8 --calib $(DIGITS)/train.npz \
		--eval $(DIGITS)/test.npz --out $(DEMO)/digits-int8 --force
	$(EDGESHIP) inspect $(DEMO)/digits-int8/model.tflite
	$(EDGESHIP) eval-host $(DEMO)/digits-int8 --data $(DIGITS)/test.npz

lint: $(STAMP)
	$(VENV)/bin/ruff check sdk converters device_agent tests bench examples tools
	$(VENV)/bin/mypy

test: $(STAMP) lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf build $(DIGITS) .pytest_cache .mypy_cache .ruff_cache
