# The AYON server runtime: one image for every role (AYON_RUN_SERVER,
# AYON_RUN_SETUP, AYON_RUN_MAINTENANCE); supervisord runs the programs.
#
#   docker build -t ayon-server .
#   docker run -p 5000:5000 -e AYON_ADMIN_TOKEN=change-me ayon-server
#
# Without a registry, `make image` passes a local Debian base as BASE_IMAGE and
# wheels fetched on the host in build/wheels (installed with --no-index).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the pinned runtime dependencies ---------------
FROM ${BASE_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The glob matches nothing without build/wheels: then pip uses the package index.
COPY requirements.txt build/wheel[s] /tmp/build/
RUN python3 -m venv /opt/venv \
    && set -- /tmp/build/*.whl \
    && if [ -e "$1" ]; then set -- --no-index --find-links /tmp/build; else set --; fi \
    && /opt/venv/bin/pip install --quiet "$@" -r /tmp/build/requirements.txt \
    && /opt/venv/bin/python -c "import falcon, gunicorn, psycopg2, setproctitle, supervisor, uvloop, yaml"

# --- runtime ------------------------------------------------------------------
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG VERSION=dev
LABEL org.opencontainers.image.title="ayon-server" \
      org.opencontainers.image.description="AYON server runtime: web server, setup, maintenance and background programs under supervisord" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.documentation="README.md#deployment" \
      io.ayon.stop-timeout="45" \
      io.ayon.user="ayon (10001)"

# A fixed uid, so Kubernetes' runAsNonRoot can check it and volumes can be chowned ahead.
RUN groupadd --gid 10001 ayon \
    && useradd --no-log-init --uid 10001 --gid ayon --home-dir /home/ayon --create-home \
               --shell /usr/sbin/nologin ayon \
    && install -d -o ayon -g ayon -m 0750 /var/lib/ayon \
    && install -d -o ayon -g ayon -m 0700 /etc/supervisor

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root server/ server/
COPY --chown=root:root supervision/ supervision/
COPY --chown=root:root procs/ procs/
COPY --chown=root:root maintenance/ maintenance/
COPY --chown=root:root backup/ backup/
COPY --chown=root:root conf/ conf/
COPY --chown=root:root scripts/ scripts/
COPY --chown=root:root requirements.txt README.md ./

# The generated supervisord config goes where a bare `supervisorctl` looks and
# the non-root user may write.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AYON_DATA_DIR=/var/lib/ayon \
    AYON_SUPERVISOR_CONF=/etc/supervisor/supervisord.conf

# ayon-doctor: the command an operator types inside the container (README, Commands).
RUN python -m compileall -q server supervision procs maintenance backup \
    && ln -s /app/scripts/ayon-doctor /opt/venv/bin/ayon-doctor

USER 10001:10001
VOLUME ["/var/lib/ayon"]
EXPOSE 5000

# supervisord stops its programs gracefully on TERM, waiting up to 30 s for the
# server (stopwaitsecs): give the container 45 s (docker run --stop-timeout 45,
# Compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=10s --start-period=90s --retries=3 \
    CMD ["/app/scripts/healthcheck"]

ENTRYPOINT ["/app/scripts/docker-entrypoint.sh"]
