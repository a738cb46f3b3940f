# The jobctl worker image: slim, non-root, `jobctl worker` by default. It carries no dev tools
# (devtools/: emulators, sandbox, dev stack); `jobctl dev` there says the dev extra is missing.
#   docker build -t jobctl .
#   docker run --rm -e DATABASE_URL=... -e TEMPORAL_ADDRESS=... jobctl
# The HTTP API (OpenAPI at /openapi.json, probes /healthz and /readyz), same image:
#   docker run --rm -p 8000:8000 -e DATABASE_URL=... -e TEMPORAL_ADDRESS=... jobctl api --host 0.0.0.0
# Readiness probe: `jobctl worker --check` (exit 0 when Temporal and the database answer).
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md alembic.ini ./
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
COPY schemas ./schemas
COPY config ./config
COPY services ./services
COPY migrations ./migrations
# The locked versions, hashes checked (`make lock` writes requirements.lock), then jobctl itself
# without resolving anything: two builds of one commit get the same packages.
RUN python -m venv /opt/jobctl \
    && /opt/jobctl/bin/pip install --no-cache-dir --require-hashes -r requirements.lock \
    && /opt/jobctl/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home jobctl
COPY --from=build /opt/jobctl /opt/jobctl
COPY --from=build /src/alembic.ini /app/alembic.ini
COPY --from=build /src/migrations /app/migrations
ENV PATH=/opt/jobctl/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json
WORKDIR /app
USER 10001
# `jobctl api` listens on 8000 (`--port` to change it).
EXPOSE 8000
# SIGTERM drains: in-flight activities get the worker's graceful shutdown timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["jobctl"]
CMD ["worker"]
