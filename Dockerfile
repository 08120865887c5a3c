# Tether node image: one daphne process per container, as deploy/tether@.service
# runs one per systemd unit. Build from the repository top:
#   docker build -t tether:latest .
# Run the whole stack (nginx, two nodes, PostgreSQL, Redis): deploy/docker-compose.yml,
# docs/deployment.md, "Containers".

# Any Debian bookworm image with Python 3.11 and its venv module. The tests
# build on a local debootstrap of bookworm through this argument (no registry
# is reachable there); users keep the official image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
WORKDIR /srv/tether
COPY requirements.txt ./
# The runtime part of requirements.txt: every line above "# Tests and lint",
# without the editable Python SDK (the nodes do not import it). The marker is
# checked, so a reshaped file fails the build instead of shipping pytest.
RUN set -eu; \
    grep -qx '# Tests and lint' requirements.txt; \
    sed '/^# Tests and lint$/,$d' requirements.txt | grep -v '^-e ' > /tmp/runtime.txt; \
    python3 -m venv /srv/tether/.venv; \
    /srv/tether/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/runtime.txt

# ---------------------------------------------------------------- node image
FROM ${PYTHON_IMAGE}
ENV PATH=/srv/tether/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric ids, as deploy/kubernetes/ runs the pod (runAsUser 10001).
RUN groupadd --system --gid 10001 tether \
    && useradd --system --uid 10001 --gid tether --home-dir /srv/tether --no-create-home \
       --shell /usr/sbin/nologin tether
WORKDIR /srv/tether
COPY --from=build /srv/tether/.venv /srv/tether/.venv
# The code belongs to root and is read-only for the node; it writes only to
# var/media (attachments, a volume in compose) and /tmp.
COPY . .
# Static files are collected into the image (whitenoise serves them from
# var/staticfiles/), so the root filesystem may be read-only. The settings
# need a SECRET_KEY and a VAPID key to load: throwaway ones for this command
# only, and nothing generated is left in the image. Every container must be
# given its real SECRET_KEY and VAPID_PRIVATE_KEY (the same on every node):
# var/ is not writable, so a node cannot make its own.
RUN SECRET_KEY=build-time-collectstatic-only-not-a-secret-0123456789abcdefghij \
    VAPID_PRIVATE_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode()[:43])')" \
       python3 manage.py collectstatic --noinput -v 0 \
    && python3 -m compileall -q -j 0 project realtime accounts \
    && rm -f var/secret_key var/vapid_private_key.pem \
    && mkdir -p var/media \
    && chown tether:tether var/media
USER 10001:10001
EXPOSE 8000
# docker stop sends SIGTERM: the node closes its sockets with 1012, removes its
# records and exits within 20 s at most (SHUTDOWN_BOUND_SECONDS); compose gives it stop_grace_period (30 s)
# before SIGKILL. daphne is PID 1 (exec form), so the signal reaches it.
STOPSIGNAL SIGTERM
# Healthy = ready to serve: the database and the channel layer answer
# (`/ready/`, docs/deployment.md section 8). Docker never restarts a container
# for this; compose waits on it (depends_on) and `docker ps` shows it. The
# start period covers the migrations of a first start (AUTO_MIGRATE).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://localhost:8000/ready/', timeout=4).status != 200)"]
# The command of deploy/tether@.service and deploy/kubernetes/: all interfaces
# (nginx reaches the container on its own address), a listen backlog for
# reconnect storms, no daphne socket timeout (it would close with 1000,
# "stop"), the client address from nginx's X-Forwarded-* headers.
CMD ["daphne", "-e", "tcp:port=8000:interface=0.0.0.0:backlog=1024", "--websocket_timeout", "-1", "--proxy-headers", "project.asgi:application"]
