# Every target bootstraps what it needs from python3: a .venv holding uv, then the pinned tools.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Three workers on two cores: the end-to-end tests spend much of their time waiting on servers,
# workers and clusters, so a third keeps both cores busy (the whole suite: 15 min here).
PYTEST_WORKERS ?= 3

.PHONY: help demo test test-fast lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	@$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --group dev
	@# checkov (the policy group) cannot share an environment with prefect-aws: its own.
	@test -x $(VENV)/checkov/bin/python || $(BIN)/uv venv --quiet $(VENV)/checkov
	@$(BIN)/uv pip install --quiet --python $(VENV)/checkov/bin/python --group policy
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP) ## Render the defaults and run them end to end on a local Prefect server
	@$(BIN)/python -m tests.e2e.demo $(DEMO_ARGS)

test: $(STAMP) ## Run the whole suite, slow end-to-end tests included
	@tests/e2e/host_tools.sh
	@tests/e2e/docker_host.sh
	@$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "" --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the fast tests only
	@$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and pre-commit on this repository
	@$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP) ## Format this repository's Python
	@$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP) ## Run the benchmarks in bench/ and print their ratios (issue 26's three first)
	@# The three budgets all run, and any over its budget fails the target.
	@rc=0; $(BIN)/python -m bench.check_bench || rc=1; \
	  $(BIN)/python -m bench.foundation_bench --demo || rc=1; \
	  $(BIN)/python -m bench.render_bench --processes --copies 5 || rc=1; \
	  exit $$rc
	@$(BIN)/python -m bench.ci_job_bench
	@$(BIN)/python -m bench.concurrency_bench
	@$(BIN)/python -m bench.slot_bench
	@$(BIN)/python -m bench.fleet_bench
	@$(BIN)/python -m bench.cluster_bench
	@tests/e2e/docker_host.sh
	@$(BIN)/python -m bench.docker_bench

clean: ## Remove the tool environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
