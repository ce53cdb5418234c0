# Quick start:  make demo   (the main job)     make test   (the test suite)
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUBSET := ../shared/cifar10-subset
# Smoke runs stay outside outputs/, so `degrade plot outputs` (make demo) never mixes them in.
SMOKE_OUT := outputs-smoke

.PHONY: help setup test test-fast lint smoke demo clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install degrade (editable) with the test tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: setup ## ruff over the package and the tests
	$(BIN)/ruff check degradation hydra_plugins tests

test: setup lint ## Run the test suite (CPU, offline, a few minutes)
	$(BIN)/python -m pytest -q

test-fast: setup ## The quick tests (not `slow`, not training networks), under a minute: the edit loop
	$(BIN)/python -m pytest -q -m "not slow and not trains"

smoke: setup ## Offline end to end: a 4-run sweep on the real-image subset (or generated data), then plots
	@if [ -d $(SUBSET)/cifar-10-batches-py ]; then root=$(SUBSET); \
	else root=$(SMOKE_OUT)/data; [ -d $$root/cifar-10-batches-py ] || \
	  $(BIN)/degrade generate-data $$root; fi; \
	set -e; \
	$(BIN)/degrade sweep experiment=smoke depth=20,56 arch=plain,resnet \
	  data.root=$$root output_dir=$(SMOKE_OUT); \
	$(BIN)/degrade plot --linear $(SMOKE_OUT)

demo: setup ## The main job: download CIFAR-10 if missing, sweep plain/resnet x 20/56, plot
	$(BIN)/degrade sweep experiment=demo
	$(BIN)/degrade plot outputs

clean: ## Remove the virtual environment (runs in outputs/ are kept)
	rm -rf $(VENV)
