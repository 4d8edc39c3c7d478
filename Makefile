# The README's commands. uv is used from PATH, or installed once into .tools/.
UV_VERSION := 0.13.8
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
# Python caches compiled modules as usual (the image ships them compiled): some machines set
# PYTHONDONTWRITEBYTECODE, and every process the tests start would then compile every module.
unexport PYTHONDONTWRITEBYTECODE
# `make` alone lists the targets; it never starts anything.
.DEFAULT_GOAL := help
ARGS ?=
# Test processes (pytest-xdist): each has its own database, RabbitMQ vhost, Redis namespace and
# worker processes, so they never see each other's runs. The suite mostly waits on the
# processes it starts; three keep two cores busy.
TEST_WORKERS ?= 3

.PHONY: help run test test-fast bench-check image-check lint format pytest switchyard uv console-screenshots

## List the targets
help:
	@echo "make run                    the whole product on embedded backends (http://127.0.0.1:8000)"
	@echo "make test                   the test suite with coverage, in parallel (as CI runs it)"
	@echo "make test-fast              unit tests and the task core in process (about 1.5 minutes)"
	@echo "make bench-check            every benchmark once on a tiny size (CI runs it after make test)"
	@echo "make image-check            two clean image builds give one digest (needs a container engine; CI)"
	@echo "make lint                   ruff check, ruff format --check, mypy"
	@echo "make format                 ruff format and ruff check --fix"
	@echo "make pytest ARGS='...'      pytest with your arguments, e.g. ARGS='tests/unit -k settings'"
	@echo "make switchyard ARGS='...'  the switchyard command, e.g. ARGS='run migrate'"
	@echo "make uv ARGS='...'          any uv command, e.g. ARGS='run alembic current'"
	@echo "make console-screenshots    the README's console screenshots (docs/images/console)"
	@echo "uv itself: $(UV)"

## Run the whole product on embedded backends (http://127.0.0.1:8000)
run: $(UV)
	$(UV) run --frozen switchyard run standalone

## Run the test suite with coverage (at least 85% of apps/backend/src); the benchmarks' own
## check is `bench-check`
test: $(UV)
	$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist worksteal --durations=30 --cov --cov-report=term-missing:skip-covered --ignore=tests/bench --ignore=tests/image

## The fast subset: unit tests and the task core in process, on the real servers (no role
## process is started)
test-fast: $(UV)
	$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist worksteal tests/unit tests/integration/tasks

## Every benchmark under bench/ once, on a tiny size: each still runs and prints its figures
## and targets (no timing decides anything). Untraced, like the benchmarks themselves.
bench-check: $(UV)
	$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist worksteal -p no:cacheprovider tests/bench

## Two clean builds of the image give one digest (tests/image; minutes: two builds). Needs a
## container engine: ../shared/tools/container-engine up, or Docker and buildah
image-check: $(UV)
	$(UV) run --frozen pytest -p no:cacheprovider tests/image

## Lint, format check and type check
lint: $(UV)
	$(UV) run --frozen ruff check
	$(UV) run --frozen ruff format --check
	$(UV) run --frozen mypy

## Format the code and apply the safe lint fixes
format: $(UV)
	$(UV) run --frozen ruff format
	$(UV) run --frozen ruff check --fix

## The console's screenshots in the README, from its browser test (needs Chromium and the servers)
console-screenshots: $(UV)
	CONSOLE_SCREENSHOTS=$(CURDIR)/docs/images/console $(UV) run --frozen pytest -p no:cacheprovider \
		tests/e2e/test_console_in_browser.py -k 'operator or superuser'

pytest: $(UV)
	$(UV) run --frozen pytest $(ARGS)

switchyard: $(UV)
	$(UV) run --frozen switchyard $(ARGS)

uv: $(UV)
	$(UV) $(ARGS)

$(CURDIR)/.tools/bin/uv:
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"
