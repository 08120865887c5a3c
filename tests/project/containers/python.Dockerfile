# Stands in for python:3.11-slim-bookworm in the container test: Debian
# bookworm's own Python 3.11 with its venv module, on the test's local
# debootstrap of bookworm (no registry is reachable from the test machines).
# The test machine's CA bundle comes with the build context (host-ca.pem, put
# there by the test), for pip behind the machine's TLS-inspecting egress; the
# shipped Dockerfile knows nothing of it.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY host-ca.pem /etc/ssl/certs/tether-test-host-ca.pem
ENV PIP_CERT=/etc/ssl/certs/tether-test-host-ca.pem
