# The two commands a newcomer needs: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
RUNTIME = $(VENV)/.runtime
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast lint format bench soak generate clean help

help:
	@echo "make demo      set up and run the demo (simulator + exporter, no config, no network) on 127.0.0.1:10110"
	@echo "make test      set up, lint, and run every test with line coverage of exporter/ (installs Prometheus/Alertmanager from Debian if missing)"
	@echo "make lint      ruff and mypy"
	@echo "make bench     benchmarks, results in docs/benchmarks.md"
	@echo "make soak      a bounded soak run with faults (about 5 minutes)"
	@echo "make generate  regenerate alert rules, dashboards, reference docs, Kubernetes rules and the compose stack's"

# The exporter and its runtime dependencies alone: all the demo needs (seconds, not the test
# toolchain's minutes and hundreds of MB).
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $(RUNTIME)

# Plus the test toolchain (pytest, ruff, mypy, playwright, ...).
$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/asyncjob-exporter demo

# Line coverage of exporter/, measured in the pytest process only (the CLI and simulator the e2e
# tests start as subprocesses are not measured). The floor is the figure measured when it was set,
# rounded down: 89.9% (8253 of 9182 statements) without the e2e tests on 2026-12-06, so 88. Raise
# it as coverage grows; a change that needs it lowered needs tests instead.
COVERAGE = --cov=exporter --cov-report=term:skip-covered --cov-fail-under=88

# The slowest tests are listed at the end of each run: the suite is kept under about 15 minutes.
test: $(STAMP) lint
	scripts/install-test-deps
	$(BIN)/pytest -q -p no:cacheprovider --durations=25 $(COVERAGE)

test-fast: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m "not e2e"

lint: $(STAMP)
	$(BIN)/ruff check exporter tests bench dashboards docs deploy
	$(BIN)/ruff format --check exporter tests bench dashboards docs deploy
	$(BIN)/mypy exporter tests bench dashboards docs deploy

format: $(STAMP)
	$(BIN)/ruff format exporter tests bench dashboards docs deploy
	$(BIN)/ruff check --fix exporter tests bench dashboards docs deploy

bench: $(STAMP)
	$(BIN)/python -m bench

soak: $(STAMP)
	$(BIN)/python -m bench.soak

generate: $(STAMP)
	$(BIN)/python dashboards/generate.py
	@if [ -f docs/generate.py ]; then $(BIN)/python docs/generate.py; fi
	@if [ -f deploy/kubernetes/generate.py ]; then $(BIN)/python deploy/kubernetes/generate.py; fi
	$(BIN)/asyncjob-exporter mixin --config deploy/compose/mixin.yml --out deploy/compose/monitoring

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
