# The two commands a fresh machine needs: `make run` and `make test`.
# Each bootstraps .venv and (re)installs when pyproject.toml changed.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: lock deploy-check run run-empty import-examples test test-fast test-money fuzz lint fmt install bench bench-imports bench-scale-out bench-scale clean openapi client-check

$(PY):
	python3 -m venv $(VENV)

# From the lock (hashes checked), then jobctl itself without resolving anything: two installs of
# one commit get the same versions. A dependency added to pyproject.toml needs `make lock` too
# (tests/unit/test_lock_file.py fails until it is done).
$(STAMP): pyproject.toml requirements-dev.lock | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# requirements.lock (the image's) and requirements-dev.lock (make install, CI) from pyproject.toml:
# every package pinned with its hashes, for Python 3.11+ on any platform. Versions already locked
# stay unless pyproject.toml excludes them; `make lock LOCK_ARGS=--upgrade` takes the newest.
LOCK_ARGS ?=
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock' $(LOCK_ARGS)
lock: | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check 'uv>=0.9,<1'
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --extra dev -o requirements-dev.lock

run: $(STAMP)
	$(VENV)/bin/jobctl dev --demo

# The stack with no demo data: your own comes in with `jobctl import` (README, "Importing your data").
run-empty: $(STAMP)
	$(VENV)/bin/jobctl dev

# Every example file of examples/import/ into the running stack (`make run-empty` in another
# terminal), dependencies first; a second run finds each file imported and changes nothing.
IMPORT_EXAMPLES := retailers:retailers.csv credit_accounts:credit_accounts.csv \
	credit_transactions:credit_transactions.csv orders:orders.csv companies:companies.jsonl \
	memberships:memberships.jsonl recovery_cases:recovery_cases.csv customers:customers.csv \
	loyalty_balances:loyalty_balances.csv
import-examples: $(STAMP)
	@set -e; for pair in $(IMPORT_EXAMPLES); do \
		$(VENV)/bin/jobctl import $${pair%%:*} examples/import/$${pair#*:}; \
	done

# Every tier: unit, workflows (mocked activities), activities (real PostgreSQL), e2e (dev server,
# real worker processes, emulators), replay, devtools.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The tiers that need no database and no worker process: seconds, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit tests/workflows $(PYTEST_ARGS)

# The ledger property tests only, long: thousands of random sequences per property (MONEY_EXAMPLES,
# 2000 by default) instead of `make test`'s bounded, derandomized few (tests/properties.py). Minutes.
MONEY_TESTS := tests/activities/test_credit_ledger.py tests/activities/test_credit_ledger_sequences.py \
	tests/activities/test_loyalty_ledger_properties.py
test-money: $(STAMP)
	HYPOTHESIS_PROFILE=money $(PY) -m pytest $(MONEY_TESTS) --hypothesis-show-statistics $(PYTEST_ARGS)

# The outsider's fuzz pass only, larger (issue #33 point 7): schemathesis over every operation with a
# key per scope set, its state machine over the inferred links, signed random Stripe and Twilio
# webhooks; FUZZ_SCALE (1 in `make test`, 30 here) multiplies every case count. Minutes.
FUZZ_SCALE ?= 30
FUZZ_TESTS := tests/e2e/test_api_fuzz.py tests/e2e/test_api_schemathesis.py
fuzz: $(STAMP)
	FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest $(FUZZ_TESTS) -s $(PYTEST_ARGS)

# Every overlay of deploy/k8s/ rendered (no cluster, no kustomize binary) and validated against the
# Kubernetes schemas, then the invariants the code asks of them (docs/OPERATIONS.md, "Kubernetes").
# `make test` runs the same test. One overlay's objects: .venv/bin/python -m devtools.deploy render prod
deploy-check: $(STAMP)
	$(PY) -m devtools.deploy check
	$(PY) -m pytest tests/unit/test_k8s_manifests.py -q $(PYTEST_ARGS)

# docs/openapi.json, regenerated from the app (a test holds the committed one to it).
openapi: $(STAMP)
	$(PY) -m workers.api.app > docs/openapi.json

# A client generated from docs/openapi.json by openapi-python-client (in its own virtualenv under
# .jobctl/, made on first use), refusing any schema it cannot turn into a class; then the suite's
# calls through it against the real stack (tests/e2e/test_api_generated_client.py).
client-check: $(STAMP)
	$(PY) -m devtools.openapi_client
	$(PY) -m pytest tests/e2e/test_api_generated_client.py $(PYTEST_ARGS)

# The style, as CI holds it: ruff's lint and format check, then mypy (packages in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Fix what ruff can (imports, upgrades) and format the tree.
fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Every benchmark, 3 runs each on a quiet machine; the medians go to docs/BENCHMARKS.md's summary.
bench: $(STAMP)
	$(PY) benchmarks/bench.py

# `jobctl import` of 50,000 retailers with accounts against a plain COPY, 3 quiet runs (issue #34).
bench-imports: $(STAMP)
	$(PY) benchmarks/bench.py --only imports

# Issue #36's scale-out drill, 3 quiet runs: 3 workers per queue and 2 API processes under a
# reminders day plus API checkouts, one of each killed -9 and added back (not in `make bench`).
bench-scale-out: $(STAMP)
	$(PY) benchmarks/bench.py --only scale_out

# Issue #38 points 4 and 5: each family at 1k, 10k and 100k units (3 quiet runs each, 1 at 100k),
# CPU per unit and billable Temporal actions per unit, and the cost of a day (not in `make bench`:
# it takes about an hour). SIZES / FAMILIES narrow it: make bench-scale SIZES=1000,10000 FAMILIES=insights
SIZES ?= 1000,10000,100000
FAMILIES ?= reminders,insights,orders,churn,loyalty,imports
bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py --sizes $(SIZES) --families $(FAMILIES)

clean:
	rm -rf .jobctl
