# syntax=docker/dockerfile:1.7
# One image for every role: SERVICE_TYPE picks api-gateway, worker, beat, migrate or standalone.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the lock alone: this layer survives every source change.
COPY pyproject.toml uv.lock ./
COPY apps/backend/pyproject.toml apps/backend/README.md apps/backend/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package switchyard --group container
COPY apps/backend/src apps/backend/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package switchyard --group container

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin switchyard \
    && mkdir -p /app/var \
    && chown switchyard:switchyard /app/var
COPY --from=build /app/.venv /app/.venv
COPY .env.infrastructure /app/.env.infrastructure
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8000 \
    VAR_DIR=/app/var
WORKDIR /app
USER 10001:10001
EXPOSE 8000 9101 9102
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["switchyard", "healthcheck"]
# dumb-init is PID 1: it forwards SIGTERM/SIGINT to the role and reaps orphans.
ENTRYPOINT ["dumb-init", "--", "switchyard", "run"]
