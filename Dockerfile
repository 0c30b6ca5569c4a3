# payment-worker: one image for every command of the contract (§6).
#
#   docker build -t payment-worker:local .
#   docker run --rm payment-worker:local            # = payment-worker run (the worker)
#   docker run --rm payment-worker:local shim       # the HTTP shim on PAYMENT_SHIM_PORT (5004)
#   docker run --rm payment-worker:local migrate    # create or upgrade the schema (safe to rerun)
#   docker run --rm payment-worker:local replay --from-beginning
#
# Configuration is environment only (PAYMENT_*). Layout inside the image:
#   /opt/venv   the locked runtime dependencies (requirements.lock, hashed; no dev extras) and
#               the payment-worker wheel, whose package carries its Avro schemas and SQL files

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

# Dependencies first, so this layer is rebuilt only when the lock changes: exactly the versions
# and hashes of requirements.lock (`make lock`), the runtime set without the dev tools.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then the project, built as a wheel and installed like any package (not editable): what runs
# is what `pip install payment-worker` would run. --no-deps: everything it needs is above.
COPY pyproject.toml README.md ./
COPY payment_worker/ ./payment_worker/
RUN pip wheel --no-deps --wheel-dir /tmp/dist . \
    && pip install --no-deps /tmp/dist/payment_worker-*.whl \
    && python -m compileall -q /opt/venv

# --------------------------------------------------------------------------------------------
# runtime: the slim base and the venv; no compilers, no pip cache, no source tree, not root.
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

WORKDIR /tmp
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
