# hpscale API: SQLite on the /data volume by default, PostgreSQL via HPSCALE_DATABASE_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HPSCALE_DATABASE_URL=sqlite:////data/hpscale.db

RUN useradd --create-home --uid 10001 hpscale \
    && mkdir -p /data \
    && chown hpscale:hpscale /data

WORKDIR /opt/hpscale
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY fitting ./fitting
COPY store ./store
COPY migrations ./migrations
COPY hpscale ./hpscale
# The project itself, not a registry package: its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[postgres]'

USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# Bootstrap the first admin with -e HPSCALE_BOOTSTRAP_ADMIN_TOKEN=<secret>.
CMD ["hpscale", "serve", "--host", "0.0.0.0", "--port", "8000"]
