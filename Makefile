# The project's commands. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test lint typecheck pytest services crashfuzz bench bench-quick bench-compare bench-deps clean

PLUGINS = backends/postgres backends/redis adapters/temporal adapters/inngest adapters/restate
INSTALL = -e '.[dev]' -e backends/postgres -e backends/redis -e 'adapters/temporal[test]' -e 'adapters/inngest[test]' -e 'adapters/restate[test]'

$(BIN)/.installed: pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(INSTALL)
	touch $@

setup: $(BIN)/.installed            ## create .venv and install the project with its dev tools
	bash scripts/ensure-restate.sh >/dev/null   # restate-server for the Restate adapter's tests

demo: setup                          ## the AI pipeline demo: worker SIGKILLed mid-run, resumed, proof
	$(BIN)/python examples/ai_pipeline.py

services:                            ## make sure PostgreSQL and Redis answer (start them if not)
	bash scripts/ensure-services.sh

lint: setup
	$(BIN)/ruff check src tests scripts examples benchmarks $(PLUGINS)
	$(BIN)/ruff format --check src tests scripts examples benchmarks $(PLUGINS)

typecheck: setup
	$(BIN)/mypy

pytest: setup services              ## the whole suite, in 2 processes (pytest-xdist)
	$(BIN)/pytest -q -n 2 --dist worksteal

crashfuzz: setup services           ## the long crash-fuzz profile (~20 min): prints crashes per point, violations
	CRASHFUZZ_PROFILE=long $(BIN)/pytest -q -s tests/test_crash_fuzz.py tests/test_crash_fuzz_planted.py tests/test_crash_fuzz_procs.py

test: lint typecheck pytest          ## everything CI runs: ruff, mypy, the whole test suite

bench-deps: setup                    ## the benchmark-only dependencies (peers, chart) and restate-server
	$(BIN)/pip install --quiet -e '.[bench]'
	bash scripts/ensure-restate.sh >/dev/null

bench: bench-deps services           ## the whole benchmark table, ours vs peers (~15 min): benchmarks/results/
	$(BIN)/python -m benchmarks

bench-quick: bench-deps services     ## every target once at tiny sizes (a smoke run; figures mean nothing)
	$(BIN)/python -m benchmarks --quick

ifneq ($(filter bench-compare,$(MAKECMDGOALS)),)
ifndef BASE
$(error usage: make bench-compare BASE=<git ref to compare with, e.g. main or 11e0516>)
endif
endif
bench-compare: bench-deps services   ## ours vs an earlier commit, side by side: make bench-compare BASE=<ref>
	$(BIN)/python -m benchmarks --baseline-ref $(BASE) --only ours,raw

clean:
	rm -rf $(VENV) .coro_durable build dist src/*.egg-info
