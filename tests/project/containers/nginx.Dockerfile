# Stands in for the official nginx image: Debian's nginx, its configuration
# laid out as the official image's is (sites in /etc/nginx/conf.d/, no default
# site), so that deploy/container/nginx.sh runs on both unchanged.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
