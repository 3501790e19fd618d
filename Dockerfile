# asyncjob-exporter: a wheel built in one stage, installed into a slim runtime with no build tools.
#
#   docker build -t asyncjob-exporter .
#   docker run --rm -p 10110:10110 asyncjob-exporter --web.listen-address=:10110 demo
#   docker run --rm -p 10110:10110 \
#     -v "$PWD/asyncjob.yml:/etc/asyncjob-exporter/config.yml:ro" \
#     -v "$PWD/secrets:/run/secrets:ro" asyncjob-exporter
#
# Secrets are mounted at run time (auth.*_file / *_env in the config); none are baked in.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is made of, so editing tests or docs does not bust the cache.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The project's wheel plus a wheel of every dependency: the runtime stage installs them offline
# through a bind mount (BuildKit, the default builder since Docker 23), so no wheel stays in a layer.
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels asyncjob-exporter \
    && groupadd --system --gid 10110 asyncjob \
    && useradd --system --uid 10110 --gid 10110 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin asyncjob \
    && mkdir -p /etc/asyncjob-exporter /var/lib/asyncjob-exporter \
    && chown 10110:10110 /var/lib/asyncjob-exporter

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10110:10110
WORKDIR /var/lib/asyncjob-exporter
# The state file (state_file: /var/lib/asyncjob-exporter/state.db) keeps tracked jobs across restarts.
VOLUME ["/var/lib/asyncjob-exporter"]
EXPOSE 10110

# The slim image has no curl; the exporter's own Python does the check. /healthz needs no
# auth; an exporter served over TLS (--web.config.file) needs its own check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:10110/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["asyncjob-exporter"]
CMD ["--config.file=/etc/asyncjob-exporter/config.yml"]
