# The two commands of the README: `make demo` (the main job) and `make test` (what CI runs).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHON := $(CURDIR)/$(VENV)/bin/python

.PHONY: setup demo demo-cluster test unit e2e lint crds bed-up bed-down bench frontier clean

setup:
	@scripts/setup.sh

# The embedded default: replay a bundled real trace (Azure code, 57 min) through llmscale and the baselines.
demo:
	@scripts/setup.sh python
	@$(PY) -m llmscale.cli simulate --out out/demo --progress

# The same on the local cluster: operator + fake GPU nodes + Prometheus + a traffic burst.
demo-cluster: setup
	@scripts/demo-cluster.sh

lint:
	@$(VENV)/bin/ruff check operator tests e2e bench
	@$(VENV)/bin/mypy

unit:
	@$(VENV)/bin/pytest -q tests

# Everything: lint, unit and property tests, then the e2e suite on the local test bed.
test: setup
	@scripts/test.sh

crds:
	@$(PY) -m llmscale.cli crds -o crds/llmdeployments.llmscale.io.yaml
	@cp crds/llmdeployments.llmscale.io.yaml charts/llmscale/crds/
	@$(PY) -m llmscale.cli api-reference -o docs/api-reference.md

bed-up: setup
	@e2e/cluster up

bed-down:
	@e2e/cluster down

bench:
	@scripts/setup.sh python
	@$(PY) -m bench.decision_quality

# Every policy over its headroom knob: attainment-vs-GPU-hours frontiers, one PNG per trace (~10 min).
frontier:
	@scripts/setup.sh python
	@$(PY) -m bench.frontier

clean: bed-down
	rm -rf out bench/out .pytest_cache .mypy_cache .ruff_cache
