# Two entry points (see README.md):
#   make rebuild [SOURCE=/path/to/tree]   set up .venv, run the `rebuild` job, print a summary
#   make test                             set up .venv, run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The tree to index. Default: this checkout (real code, small enough to embed in about a minute).
SOURCE ?= $(CURDIR)
# Dagster instance storage: sqlite (dagster.yaml) or postgres (dagster.postgres.yaml, DAGSTER_PG_* variables).
INSTANCE ?= sqlite

ifeq ($(INSTANCE),postgres)
export DAGSTER_HOME ?= $(CURDIR)/.dagster-postgres
INSTANCE_YAML := $(CURDIR)/dagster.postgres.yaml
else
export DAGSTER_HOME ?= $(CURDIR)/.dagster
INSTANCE_YAML := $(CURDIR)/dagster.yaml
endif
# One knowledge store per tree: .nova for this checkout, .nova-<name> for another SOURCE (re-pointing a built
# store at a different tree would delete it all, which the mass-deletion guard refuses).
ifeq ($(abspath $(SOURCE)),$(CURDIR))
export NOVA_HOME ?= $(CURDIR)/.nova
else
export NOVA_HOME ?= $(CURDIR)/.nova-$(notdir $(abspath $(SOURCE)))
endif
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install bytecode dagster-home rebuild status test lint ui bench mutation clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Bytecode of the package's own modules: an editable install compiles none, and where PYTHONDONTWRITEBYTECODE
# is set (these machines, most container images) every run process would compile them again, about 0.06 s
# of each `dagster job execute` (README, "The warm path"). Quick when nothing changed.
bytecode: install
	@$(BIN)/python -m compileall -q nova_pipeline >/dev/null

# DAGSTER_HOME gets a link to the instance file; an existing dagster.yaml there is left alone.
dagster-home:
	@mkdir -p "$(DAGSTER_HOME)"
	@[ -e "$(DAGSTER_HOME)/dagster.yaml" ] || ln -s "$(INSTANCE_YAML)" "$(DAGSTER_HOME)/dagster.yaml"

# nova rebuild runs the `rebuild` job in this process on DAGSTER_HOME, with live progress; `dagster job execute
# -m nova_pipeline.definitions -j rebuild` runs the same job with Dagster's own console output.
rebuild: install bytecode dagster-home
	$(BIN)/nova rebuild --source "$(SOURCE)" $(REBUILD_ARGS)
	NOVA_SOURCE_DIR="$(SOURCE)" $(BIN)/nova status

status: install
	NOVA_SOURCE_DIR="$(SOURCE)" $(BIN)/nova status

test: install bytecode lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check nova_pipeline nova_pipeline_tests benchmarks tools
	$(BIN)/ruff format --check nova_pipeline nova_pipeline_tests benchmarks tools

ui: install bytecode dagster-home
	NOVA_SOURCE_DIR="$(SOURCE)" $(BIN)/dagster dev -m nova_pipeline.definitions

bench: install bytecode
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# Mutation testing of the safety-critical modules ([tool.mutmut] in pyproject.toml) against their fast unit
# tests: a few minutes; not part of `make test`. Fails when a module scores under 90 %.
mutation: install
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/python tools/mutation_score.py --recheck --show

clean:
	rm -rf .nova .dagster .dagster-postgres
