# One command per job. `make book` runs the whole study and renders the site;
# `make test` runs the test suite. Both create .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default
JOBS ?= 2
# The store the book is rendered from: $OPTSTUDY_STORE when set.
STORE ?= $(or $(OPTSTUDY_STORE),$(CURDIR)/results/$(PROFILE)/results.sqlite)

.PHONY: venv study book book-only test clean-book

$(BIN)/python: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(BIN)/python

venv: $(BIN)/python

study: venv
	$(BIN)/python scripts/run_study.py --profile $(PROFILE) --jobs $(JOBS) \
		--export-records results/$(PROFILE)/records

# Renders the book from $(STORE) into _build/html.
# Warnings are errors, and a notebook cell that raises fails the build.
book-only: venv
	OPTSTUDY_STORE=$(STORE) \
		$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going

book: study book-only

test: venv
	$(BIN)/python -m pytest

clean-book:
	rm -rf _build
