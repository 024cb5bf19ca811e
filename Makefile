# svlaunch: one entry point for set-up, demo, tests and benchmarks.
# `make demo` and `make test` work on a fresh Debian 12 machine: they install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup host-deps demo test test-fast lint fmt guest rig bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode: a plain .pth path entry instead of an import-hook finder (~10 ms per start)
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

host-deps:
	scripts/host-deps

guest: setup host-deps
	scripts/build-guest

demo: setup host-deps guest
	scripts/demo

test: setup host-deps guest
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not rig and not long"

SCRIPTS := scripts/rig scripts/build-guest scripts/measure-syscalls scripts/readme-numbers

# ruff on everything; mypy on launcher/ and engine/ (its settings are pyproject.toml's)
lint: setup
	$(BIN)/ruff check launcher engine tests bench scripts $(SCRIPTS)
	$(BIN)/ruff format --check launcher engine tests bench scripts $(SCRIPTS)
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff format launcher engine tests bench scripts $(SCRIPTS)
	$(BIN)/ruff check --fix launcher engine tests bench scripts $(SCRIPTS)

bench: setup host-deps guest
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache .hypothesis
