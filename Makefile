# Quick start:  make demo   (the main job)     make test   (the test suite)
# Both create the virtual environment in .venv when it is missing.
# Offline, with a CIFAR-10 copy you have:  make demo DATA=/path/to/folder  (the folder that
# holds cifar-10-batches-py/; nothing is downloaded then).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUBSET := ../shared/cifar10-subset
# Smoke runs stay outside outputs/, so `degrade plot outputs` (make demo) never mixes them in.
SMOKE_OUT := outputs-smoke
# make test-min: the oldest Python and dependencies degrade declares (.ci/minimum-versions.txt).
PYTHON_MIN ?= python3.10
MIN_VENV   := .venv-min
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes CPU builds of torch, where the
# default index's Linux torch brings gigabytes of CUDA libraries.
TORCH_INDEX ?=
DATA ?=
# With DATA, the runs read that copy of CIFAR-10 and never download.
DATA_OVERRIDES := $(if $(DATA),data.root=$(DATA) data.download=false)

.PHONY: help setup test test-fast test-min lint smoke quick demo clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "  DATA=DIR  (demo, quick) read the CIFAR-10 copy in DIR/cifar-10-batches-py, offline"

setup: $(STAMP) ## Create .venv and install degrade (editable) with the test tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: setup ## ruff over the package and the tests
	$(BIN)/ruff check degradation hydra_plugins tests

test: setup lint ## ruff, then the whole test suite (CPU, offline; README: Development)
	$(BIN)/python -m pytest -q

test-fast: setup ## The tests neither `slow` nor training networks: the edit loop
	$(BIN)/python -m pytest -q -m "not slow and not trains"

test-min: ## The fast tests on the declared minimum versions, in .venv-min (needs the package index)
	rm -rf $(MIN_VENV)
	$(PYTHON_MIN) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -c .ci/minimum-versions.txt -e '.[test]'
	$(MIN_VENV)/bin/python -m pip check
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow and not trains" -p no:cacheprovider

smoke: setup ## Offline end to end: a 4-run sweep on the real-image subset (or generated data), then plots
	@if [ -d $(SUBSET)/cifar-10-batches-py ]; then root=$(SUBSET); \
	else root=$(SMOKE_OUT)/data; [ -d $$root/cifar-10-batches-py ] || \
	  $(BIN)/degrade generate-data $$root; fi; \
	set -e; \
	$(BIN)/degrade sweep experiment=smoke depth=20,56 arch=plain,resnet \
	  data.root=$$root output_dir=$(SMOKE_OUT); \
	$(BIN)/degrade plot --linear $(SMOKE_OUT)

quick: setup ## Degradation on a CPU: plain/resnet x 20/56, 2,000 iterations, then claims and plots
	$(BIN)/degrade sweep experiment=quick $(DATA_OVERRIDES)
	$(BIN)/degrade claims outputs
	$(BIN)/degrade plot outputs

demo: setup ## The main job: download CIFAR-10 if missing, sweep plain/resnet x 20/56, plot
	$(BIN)/degrade sweep experiment=demo $(DATA_OVERRIDES)
	$(BIN)/degrade plot outputs

clean: ## Remove the virtual environment (runs in outputs/ are kept)
	rm -rf $(VENV)
