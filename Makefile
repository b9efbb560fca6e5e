# The two commands a fresh machine needs: `make run` and `make test` (`make test-fast`: the unit tier only).
# Both create/refresh .venv themselves (idempotent; fast when setup.py is unchanged).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
UV := $(VENV)/bin/uv
DATE ?= $(shell date -u -d yesterday +%Y-%m-%d)
INPUT ?=
PRESET ?= cpu
PYTEST_ARGS ?=
# Test worker processes, each running whole test files (module fixtures built once); 1: in this process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

.PHONY: run test test-fast lint format bench java clean-run

java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java 17+ is required for Spark (install e.g. openjdk-17-jre-headless)"; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	 [ "$${v:-0}" -ge 17 ] || { echo "error: Java 17+ is required for Spark, found Java $${v:-unknown}"; exit 1; }

$(STAMP): setup.py
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@[ -x $(UV) ] || $(VENV)/bin/pip install -q uv==0.13.8
	$(UV) pip install --python $(VENV)/bin/python --compile-bytecode -q -e '.[dev]'
	@touch $(STAMP)

run: java $(STAMP)
	$(VENV)/bin/vasp run --date $(DATE) --preset $(PRESET) $(if $(INPUT),--input $(INPUT))

test: java $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The unit tier: no trainings to convergence, no real data, no servers (local Spark only).
test-fast: java $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest tests/unit tests/faults -m "not slow and not service and not realdata" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: java $(STAMP)
	$(VENV)/bin/python bench/build.py
	$(VENV)/bin/python bench/train.py
	$(VENV)/bin/python bench/score.py
	$(VENV)/bin/python bench/dag.py
