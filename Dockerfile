# syntax=docker/dockerfile:1.7
# crm-api for production: PostgreSQL is external (CRM_DATABASE_URL); the image has no
# embedded database use. Build:  docker build -t crm-api .
# Run:    docker run -e CRM_ENV=production -e CRM_DATABASE_URL=postgresql://… \
#                    -e CRM_JWT_SIGNING_KEY=… -p 8000:8000 crm-api

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first (cached layer), exactly as pinned and hash-checked by the lock file.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . \
 && pip uninstall -y pytest pytest-asyncio ruff mypy >/dev/null 2>&1 || true

FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CRM_ENV=production \
    CRM_HOST=0.0.0.0 \
    CRM_PORT=8000 \
    CRM_DATA_DIR=/var/lib/crm-api
RUN groupadd --system --gid 10001 crm \
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
# `serve` migrates to head, then starts uvicorn; pass e.g. `--workers 2` after the image name.
ENTRYPOINT ["crm-api"]
CMD ["serve"]
