# The two commands a fresh machine needs: `make run` and `make test`.
# Each bootstraps .venv and (re)installs when pyproject.toml changed.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test test-fast install bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/jobctl dev --demo

# Every tier: unit, workflows (mocked activities), activities (real PostgreSQL), e2e (dev server,
# real worker processes, emulators), replay, devtools.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The tiers that need no database and no worker process: seconds, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit tests/workflows $(PYTEST_ARGS)

# Every benchmark, 3 runs each on a quiet machine; the medians go to docs/BENCHMARKS.md's summary.
bench: $(STAMP)
	$(PY) benchmarks/bench.py

clean:
	rm -rf .jobctl
