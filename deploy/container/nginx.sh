#!/bin/sh
# nginx in deploy/docker-compose.yml: renders the shipped site (deploy/nginx.conf,
# mounted at /etc/tether/nginx.conf) for the stack, then runs nginx in the
# foreground. Only these lines change, each checked to match exactly:
#   - the upstream's two `server 127.0.0.1:800N` lines: one line per node in
#     TETHER_NODES (compose service names, default "tether-1:8000 tether-2:8000"),
#     with the shipped parameters;
#   - `chat.example.com`: TETHER_HOST;
#   - the certificate paths: /etc/tether/certs/fullchain.pem and privkey.pem
#     (the mounted certificate folder);
#   - the IPv6 `listen` lines are dropped where the container has no IPv6.
# Works on the official nginx image and on Debian's nginx (both include
# /etc/nginx/conf.d/*.conf in their http block).
set -eu

site=/etc/tether/nginx.conf
out=/etc/nginx/conf.d/tether.conf
host=${TETHER_HOST:-chat.example.com}
nodes=${TETHER_NODES:-tether-1:8000 tether-2:8000}
ipv6=1
[ -e /proc/net/if_inet6 ] || ipv6=0

awk -v nodes="$nodes" -v host="$host" -v ipv6="$ipv6" '
    function fail(what) { print "nginx.sh: deploy/nginx.conf changed shape: " what > "/dev/stderr"; bad = 1; exit 1 }
    /^[ \t]*server 127\.0\.0\.1:800[0-9][ ;]/ {
        upstream++
        if (upstream == 1) {
            match($0, /^[ \t]*/); indent = substr($0, 1, RLENGTH)
            params = $0; sub(/^[ \t]*server [^ ;]+/, "", params)
            k = split(nodes, list, " ")
            for (i = 1; i <= k; i++) print indent "server " list[i] params
        }
        next
    }
    /^[ \t]*ssl_certificate[ \t]/     { certs++; sub(/\/etc\/letsencrypt\/live\/chat\.example\.com\/fullchain\.pem/, "/etc/tether/certs/fullchain.pem") }
    /^[ \t]*ssl_certificate_key[ \t]/ { keys++; sub(/\/etc\/letsencrypt\/live\/chat\.example\.com\/privkey\.pem/, "/etc/tether/certs/privkey.pem") }
    /^[ \t]*listen \[::\]/ { v6++; if (!ipv6) next }
    /^[ \t]*server_name chat\.example\.com;/ { names++; sub(/chat\.example\.com/, host) }
    { print }
    END {
        if (bad) exit 1
        if (upstream != 2) fail("expected the two upstream `server 127.0.0.1:800N` lines, found " upstream + 0)
        if (certs != 1 || keys != 1) fail("expected one ssl_certificate and one ssl_certificate_key")
        if (names != 2) fail("expected two `server_name chat.example.com;` lines, found " names + 0)
        if (v6 != 2) fail("expected two IPv6 listen lines, found " v6 + 0)
    }
' "$site" > "$out.tmp"
grep -q '/etc/tether/certs/fullchain.pem' "$out.tmp" && grep -q '/etc/tether/certs/privkey.pem' "$out.tmp" \
    || { echo "nginx.sh: the certificate paths in deploy/nginx.conf changed" >&2; exit 1; }
mv "$out.tmp" "$out"
# The image's own default site would answer on port 80 next to ours.
rm -f /etc/nginx/conf.d/default.conf
nginx -t -q
exec nginx -g 'daemon off;'
