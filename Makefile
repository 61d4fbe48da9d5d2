# flowlink: `make run` starts a demo server, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test test-fast lint format bench install install-test clean chromium bytecode

$(BIN)/flowlink: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

install: $(BIN)/flowlink

$(VENV)/.test-extras: $(BIN)/flowlink pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install-test: $(VENV)/.test-extras

# With PYTHONDONTWRITEBYTECODE set, Python never caches flowlink's bytecode in an editable
# install, and every process (each CLI command, each server) compiles the sources again.
# Write it as a package install does; only changed files are compiled again.
bytecode: install
	@$(BIN)/python -m compileall -q flowlink flow_api.py

run: install bytecode
	$(BIN)/flowlink server --demo --host $(HOST) --port $(PORT)

lint: install-test
	$(BIN)/ruff check flowlink flow_api.py tests bench
	$(BIN)/ruff format --check flowlink flow_api.py tests bench
	$(BIN)/mypy flowlink flow_api.py
	$(BIN)/lint-imports

format: install-test
	$(BIN)/ruff format flowlink flow_api.py tests bench
	$(BIN)/ruff check --fix flowlink flow_api.py tests bench

# The console tests drive Debian's chromium with Playwright (browsers cannot be downloaded);
# as root (CI), install it when missing. Without it those tests skip and say why.
chromium:
	@test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && apt-get install -y -qq chromium; }

# The suite runs in TEST_WORKERS pytest-xdist processes: most of its time is spent waiting on
# servers, processes and sleeps, not on the CPU. Tests in one xdist_group run in one worker
# (see docs/architecture.md, "Testing"). TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: lint chromium bytecode
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS)

# The suite without the tests marked slow (long end-to-end runs; see docs/architecture.md).
test-fast: lint chromium bytecode
	$(BIN)/pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Each benchmark prints its figures against their goals; one that misses a goal exits 1,
# make says "Error 1 (ignored)" after it and goes on with the others.
bench: install-test bytecode
	-$(BIN)/python bench/executions.py
	-$(BIN)/python bench/events.py
	-$(BIN)/python bench/access.py
	-$(BIN)/python bench/link.py
	-$(BIN)/python bench/scaleout.py
	-$(BIN)/python bench/console.py
	-$(BIN)/python bench/apply.py
	-$(BIN)/python bench/sandbox.py
	-$(BIN)/python bench/requests.py
	-$(BIN)/python bench/scale.py --quick
	-$(BIN)/python bench/pages.py
	-$(BIN)/python bench/cli.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache flowlink.db flowlink.db-* flowlink.db.secret
