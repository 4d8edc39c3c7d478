# One image for every role: SERVICE_TYPE picks api-gateway, worker, beat, migrate, standalone or
# backup. No `# syntax=` line: the builder's own Dockerfile frontend builds it, with no registry
# asked for one.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

# The dependencies, from the lock alone: this stage (and the image layer copied from it)
# changes only when uv.lock does, never on a source change. No dev or test tools.
FROM ${PYTHON_IMAGE} AS dependencies
COPY --from=uv /uv /bin/uv
# Reproducible: two builds of one commit give one digest when the builder is given the commit's
# time (`buildah bud --timestamp "$SOURCE_DATE_EPOCH" --build-arg SOURCE_DATE_EPOCH=...`, or
# BuildKit's `--build-arg SOURCE_DATE_EPOCH=... --output type=image,rewrite-timestamp=true`;
# docs/operations.md), which sets every file's time in the layers. So modules are compiled
# here, again (-f: Python wrote some itself while the build ran), by one process in name order
# (what marshal writes depends on what it compiled before), as unchecked-hash .pyc: valid
# whatever time their sources end up with (a timestamp .pyc would be stale beside its rewritten
# source, and every start would compile every module again). The image's files do not change;
# a source edited in a running container is not recompiled.
ENV UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY apps/backend/pyproject.toml apps/backend/README.md apps/backend/
# binutils' strip, for this stage only: the wheels' shared libraries carry symbol tables that
# nothing reads at run time (about 80 MB); C sources, headers and stubs are not run either.
# The libraries auditwheel vendors (`*.libs/`) are left alone: patchelf laid them out, and a
# stripped copy no longer loads.
# Not pinned to a Debian revision: a point release removes the old one from the archive and the
# build would break; strip's output does not depend on it.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package switchyard --group container \
    && find /app/.venv -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
       -exec strip --strip-unneeded {} + \
    && find /app/.venv -type f \( -name '*.c' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \
       -o -name '*.pyi' \) -delete \
    && /app/.venv/bin/python -m compileall -q -f --invalidation-mode unchecked-hash \
       /app/.venv/lib/python3*/site-packages >/dev/null
# The environment's software bill of materials (CycloneDX 1.5, from the lock), as installed here:
# /app/sbom.cdx.json in the image. Its serial number and time come from the lock and
# SOURCE_DATE_EPOCH, so a rebuild of one commit writes the same file.
ARG SOURCE_DATE_EPOCH=0
COPY scripts/sbom.py /src/scripts/sbom.py
RUN uv export --frozen --no-dev --package switchyard --group container --no-emit-project \
       --format cyclonedx1.5 --output-file /tmp/sbom.json --quiet \
    && /app/.venv/bin/python /src/scripts/sbom.py /tmp/sbom.json uv.lock /app/sbom.cdx.json \
    && rm /tmp/sbom.json

# The project, installed over the dependencies; its files alone (package, metadata and the
# `switchyard` script, compiled in place) are set aside in /project for the image's last layer.
FROM dependencies AS project
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY apps/backend/src apps/backend/src
# uv's note of when it installed the wheel (uv_cache.json, for its own reinstall checks) is
# dropped: it is the one file that differs between two builds.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --package switchyard --out-dir /dist \
    && uv pip install --no-deps --python /app/.venv/bin/python /dist/switchyard-*.whl \
    && dist_info=$(echo /app/.venv/lib/python3*/site-packages/switchyard-*.dist-info) \
    && rm "$dist_info/uv_cache.json" && sed -i '/^switchyard-.*uv_cache\.json,/d' "$dist_info/RECORD" \
    && /app/.venv/bin/python -m compileall -q -f --invalidation-mode unchecked-hash \
       /app/.venv/lib/python3*/site-packages/switchyard >/dev/null \
    && mkdir /project \
    && tar -cf - /app/.venv/lib/python3*/site-packages/switchyard \
       /app/.venv/lib/python3*/site-packages/switchyard-*.dist-info /app/.venv/bin/switchyard \
       | tar -xf - -C /project

FROM ${PYTHON_IMAGE} AS runtime
# OCI labels: what the image is and where it came from. VERSION and REVISION are the release and
# the commit (`--build-arg REVISION=$(git rev-parse HEAD)`); SOURCE is your fork's address.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Backend foundation for multi-tenant AI SaaS products: API gateway, task workers, schedules, backups, one image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# useradd dates the password's last change (/etc/shadow) by SOURCE_DATE_EPOCH when it is given.
ARG SOURCE_DATE_EPOCH
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin switchyard \
    && mkdir -p /app/var /app/secrets \
    && chown switchyard:switchyard /app/var /app/secrets
# Layer 1, the environment (hundreds of MB): shared by every build of the same lock.
COPY --from=dependencies /app/.venv /app/.venv
COPY --from=dependencies /app/sbom.cdx.json /app/sbom.cdx.json
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
EXPOSE 8000 9101 9102 9103
# The check's own deadline is 8 s (switchyard.roles.healthcheck); compose uses the same figures.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["switchyard", "healthcheck"]
# dumb-init is PID 1: it reaps orphans and forwards SIGTERM/SIGINT to the role's process only
# (--single-child). The role stops its own children in order: a worker's processes get the
# grace period to finish their runs. Stop a worker with `docker stop -t 45` (see README).
ENTRYPOINT ["dumb-init", "--single-child", "--", "switchyard", "run"]
