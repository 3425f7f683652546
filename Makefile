# The two commands of the README. Both create .venv and install on first use.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.brainrecon-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench clean-artifacts

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	@echo "[make] installing brainrecon and its dependencies into $(VENV) (one pip command)"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev,slurm]"
	@touch $(STAMP)

install: $(STAMP)

## Run the default experiment (simulated data) and print where its report is.
demo: $(STAMP)
	$(PYTHON) -m pipelines.run

## Run the fast test suite (pytest's "no tests ran", exit code 5, counts as a failure).
test: $(STAMP)
	@$(PYTHON) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[make] pytest collected no tests: failing"; exit 1; fi; exit $$rc

## Slow tests: real data in ../shared, full experiments.
test-slow: $(STAMP)
	$(PYTHON) -m pytest -m slow $(PYTEST_ARGS)

clean-artifacts:
	rm -rf artifacts
