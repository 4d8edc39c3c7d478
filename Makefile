# The README's commands. uv is used from PATH, or installed once into .tools/.
UV_VERSION := 0.13.8
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
# Python caches compiled modules as usual (the image ships them compiled): some machines set
# PYTHONDONTWRITEBYTECODE, and every process the tests start would then compile every module.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test lint

## Run the whole product on embedded backends (http://127.0.0.1:8000)
run: $(UV)
	$(UV) run --frozen switchyard run standalone

## Run the test suite with coverage (at least 85% of apps/backend/src)
test: $(UV)
	$(UV) run --frozen pytest --cov --cov-report=term-missing:skip-covered

## Lint, format check and type check
lint: $(UV)
	$(UV) run --frozen ruff check
	$(UV) run --frozen ruff format --check
	$(UV) run --frozen mypy

$(CURDIR)/.tools/bin/uv:
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"
