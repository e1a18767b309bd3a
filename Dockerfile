# syntax=docker/dockerfile:1
# Wealth Terminal backend: multi-stage, slim, non-root, with a health check.
#   docker build -t wealth-terminal .
#   docker run -e DATABASE_URL=... -e REDIS_URL=... -e JWT_SECRET=... -p 8000:8000 wealth-terminal
# The database (PostgreSQL + TimescaleDB) and Redis run elsewhere: see docker-compose.yml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: compile/install the dependencies into a virtualenv ---------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (from pyproject.toml only), so code changes do not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
      > requirements.txt \
 && pip install --upgrade pip \
 && pip install -r requirements.txt

# --- runtime: the virtualenv and the source, nothing else --------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="wealth-terminal" \
      org.opencontainers.image.description="Wealth Terminal backend (Litestar, TimescaleDB, Redis)"
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENV=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/app/.data
WORKDIR /app
# The app finds migrations/ and sql/ next to its package (app/config.py PROJECT_ROOT).
COPY --chown=root:root app ./app
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root sql ./sql
RUN mkdir -p /app/.data && chown app:app /app/.data
USER app:app
EXPOSE 8000
# SIGTERM → graceful: readiness 503, WebSockets closed with 1001, in-flight requests finish within
# SHUTDOWN_TIMEOUT, ingestion buffer flushed. Give it longer than SHUTDOWN_TIMEOUT before SIGKILL.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status == 200 else 1)"]
CMD ["python", "-m", "app", "serve"]
