# syntax=docker/dockerfile:1.7
# One image for every role: SERVICE_TYPE picks api-gateway, worker, beat, migrate or standalone.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

# The dependencies, from the lock alone: this stage (and the image layer copied from it)
# changes only when uv.lock does, never on a source change. No dev or test tools.
FROM ${PYTHON_IMAGE} AS dependencies
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY apps/backend/pyproject.toml apps/backend/README.md apps/backend/
# binutils' strip, for this stage only: the wheels' shared libraries carry symbol tables that
# nothing reads at run time (about 80 MB); C sources, headers and stubs are not run either.
# The libraries auditwheel vendors (`*.libs/`) are left alone: patchelf laid them out, and a
# stripped copy no longer loads.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends binutils=2.40-2 \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package switchyard --group container \
    && find /app/.venv -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
       -exec strip --strip-unneeded {} + \
    && find /app/.venv -type f \( -name '*.c' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \
       -o -name '*.pyi' \) -delete

# The project, installed over the dependencies; its files alone (package, metadata and the
# `switchyard` script, compiled in place) are set aside in /project for the image's last layer.
FROM dependencies AS project
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY apps/backend/src apps/backend/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --package switchyard --out-dir /dist \
    && uv pip install --no-deps --compile-bytecode --python /app/.venv/bin/python \
       /dist/switchyard-*.whl \
    && mkdir /project \
    && tar -cf - /app/.venv/lib/python3*/site-packages/switchyard \
       /app/.venv/lib/python3*/site-packages/switchyard-*.dist-info /app/.venv/bin/switchyard \
       | tar -xf - -C /project

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin switchyard \
    && mkdir -p /app/var /app/secrets \
    && chown switchyard:switchyard /app/var /app/secrets
# Layer 1, the environment (hundreds of MB): shared by every build of the same lock.
COPY --from=dependencies /app/.venv /app/.venv
# Layer 2, the project: its own size (a source change ships this layer only).
COPY --from=project /project/ /
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
# The check's own deadline is 8 s (switchyard.roles.healthcheck); compose uses the same figures.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["switchyard", "healthcheck"]
# dumb-init is PID 1: it reaps orphans and forwards SIGTERM/SIGINT to the role's process only
# (--single-child). The role stops its own children in order: a worker's processes get the
# grace period to finish their runs. Stop a worker with `docker stop -t 45` (see README).
ENTRYPOINT ["dumb-init", "--single-child", "--", "switchyard", "run"]
