# CLUE on TFX. The two commands: `make run` (the main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONWARNINGS ?= ignore::FutureWarning,ignore::DeprecationWarning
RUN_ARGS ?=
PYTEST_ARGS ?=
# Test files run on this many pytest-xdist workers (a file's tests stay together).
TEST_WORKERS ?= 2

.PHONY: run test test-fast venv clean

# Create .venv from the lock file when it is missing (or the lock changed).
$(VENV)/.installed: requirements.lock pyproject.toml
	@bash scripts/make_venv.sh "$(VENV)"

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/clue run $(RUN_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf clue_runs .pytest_cache
