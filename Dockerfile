# hpscale API: SQLite on the /data volume by default, PostgreSQL via HPSCALE_DATABASE_URL.
# Not pinned by digest: no registry was reachable when this was written. Pin it where you
# build: `docker buildx imagetools inspect python:3.11-slim`, then FROM python:3.11-slim@sha256:<digest>.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HPSCALE_DATABASE_URL=sqlite:////data/hpscale.db

RUN useradd --create-home --uid 10001 hpscale \
    && mkdir -p /data \
    && chown hpscale:hpscale /data

WORKDIR /opt/hpscale
# Every dependency at the version and hash of requirements.lock (see README, "Security"),
# then the project itself without resolving anything again.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY fitting ./fitting
COPY service ./service
COPY store ./store
COPY migrations ./migrations
COPY hpscale ./hpscale
RUN pip install --no-cache-dir --no-deps --no-build-isolation /opt/hpscale

USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# Bootstrap the first admin from a secret file: -e HPSCALE_BOOTSTRAP_ADMIN_TOKEN_FILE=/run/secrets/<name>.
CMD ["hpscale", "serve", "--host", "0.0.0.0", "--port", "8000"]
