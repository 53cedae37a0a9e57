# syntax=docker/dockerfile:1.7
# crm-api for production: PostgreSQL is external (CRM_DATABASE_URL); the image has no
# embedded cluster (pgserver is not installed). See README "Docker" for the signing key.
# Build:  docker build -t crm-api .
# Run:    docker run --env-file crm.env -e CRM_DATABASE_URL=postgresql://… -p 8000:8000 crm-api

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Every locked distribution, downloaded and checked against the lock's hashes (cached
# layer). The lock also pins the dev tools and pgserver (the `dev` and `embedded` extras);
# they are downloaded here but never installed into the runtime environment.
COPY requirements.lock ./
RUN pip download --require-hashes --no-deps --dest /wheels -r requirements.lock
# The application as a wheel, then a fresh environment with exactly what the application
# needs at run time: resolved offline from /wheels, so every package is the locked,
# hash-checked version, and nothing of the extras comes along. Any failure fails the build.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels crm-api \
 && /opt/venv/bin/pip check \
 && ! /opt/venv/bin/pip show --quiet pgserver pytest mypy ruff 2>/dev/null

FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CRM_ENV=production \
    CRM_HOST=0.0.0.0 \
    CRM_PORT=8000 \
    CRM_DATA_DIR=/var/lib/crm-api
# pg_dump/pg_restore for `crm-api backup` / `restore` (Debian 12: PostgreSQL 15 client;
# a newer server needs a newer client: see README "Backup and restore").
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 crm \
 && useradd --system --uid 10001 --gid crm --home-dir /app --shell /usr/sbin/nologin crm \
 && mkdir -p /app /var/lib/crm-api && chown crm:crm /var/lib/crm-api
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY migrations ./migrations
COPY alembic.ini ./
USER crm
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CRM_PORT','8000'), timeout=2)"]
# `serve` migrates to head (under an advisory lock: replicas may start together), then
# starts uvicorn; pass e.g. `--workers 2` after the image name.
ENTRYPOINT ["crm-api"]
CMD ["serve"]
