"""TRUSTED_PROXIES: whose X-Forwarded-* daphne's `--proxy-headers` believes
(realtime/transport/daphne_compat.py; live through nginx in test_nginx_front_live.py)."""

from __future__ import annotations

import pytest

from project import config
from realtime.transport import daphne_compat, patches
from realtime.transport.daphne_compat import is_trusted_proxy, trusted_networks

HEADERS = {b"x-forwarded-for": [b"203.0.113.7"], b"x-forwarded-proto": [b"https"]}


@pytest.mark.parametrize(
    ("peer", "entries", "trusted"),
    [
        (["127.0.0.1", 5000], ["127.0.0.1", "::1"], True),
        (["127.0.0.3", 5000], ["127.0.0.1", "::1"], False),
        (["::1", 5000], ["127.0.0.1", "::1"], True),
        (["::ffff:127.0.0.1", 5000], ["127.0.0.1"], True),  # dual-stack listener
        (["10.2.3.4", 5000], ["10.0.0.0/8"], True),
        (["192.168.1.1", 5000], ["10.0.0.0/8"], False),
        (["192.168.1.1", 5000], ["*"], True),
        (None, ["127.0.0.1"], True),  # a UNIX socket: local processes only
        (["not-an-address", 1], ["127.0.0.1"], False),
        (["127.0.0.1", 1], [], False),
    ],
)
def test_is_trusted_proxy(peer, entries, trusted) -> None:
    assert is_trusted_proxy(peer, trusted_networks(entries)) is trusted


def test_trusted_proxies_setting_refuses_what_is_not_an_address() -> None:
    assert config.parse_trusted_proxies("127.0.0.1, 10.0.0.0/8 ,::1,*") == [
        "127.0.0.1", "10.0.0.0/8", "::1", "*",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not an IP address"):
        config.parse_trusted_proxies("nginx.internal")


def test_daphne_reads_the_headers_only_from_a_trusted_peer() -> None:
    daphne_compat.patch_daphne_close_codes()  # idempotent: what project.asgi does
    from daphne import http_protocol, ws_protocol

    for module in (http_protocol, ws_protocol):
        parse = module.parse_x_forwarded_for
        assert parse is not patches.original(patches.DAPHNE_FORWARDED_HTTP)
        args = ("X-Forwarded-For", "X-Forwarded-Port", "X-Forwarded-Proto")
        # From nginx (loopback, the default TRUSTED_PROXIES): the client it names.
        assert parse(HEADERS, *args, ["127.0.0.1", 4000], "http") == (
            ["203.0.113.7", 0],
            "https",
        )
        # From anyone else: its own address and the connection's scheme.
        assert parse(HEADERS, *args, ["198.51.100.5", 4000], "http") == (
            ["198.51.100.5", 4000],
            "http",
        )
