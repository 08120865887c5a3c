# Stands in for the official prometheus image: Debian's prometheus on PATH and
# a /bin/sh, which is all deploy/docker-compose.yml's prometheus service runs.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/*
