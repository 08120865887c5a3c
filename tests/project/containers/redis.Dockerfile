# Stands in for the official redis image: Debian's redis-server. The compose
# file's command runs it (redis-server on PATH, as in the official image).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--protected-mode", "no"]
