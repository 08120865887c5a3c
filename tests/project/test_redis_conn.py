"""One Redis address for every client: a plain server or a master found through sentinels."""

from __future__ import annotations

import pytest

from project import config
from project.redis_conn import (
    AsyncBlockingSentinelPool,
    BlockingSentinelPool,
    async_pool,
    layer_host,
    parse_sentinel_url,
    sentinel_url,
    split_urls,
    sync_pool,
)
from realtime.node.layer_compat import shard_index

KEY = "k" * 50


def test_a_sentinel_url_names_sentinels_master_db_and_passwords() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/tether/3"
        "?sentinel_password=watch"
    )
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (target.master, target.db, target.password, target.ssl) == ("tether", 3, "s@cret", True)
    assert target.sentinel_options()["password"] == "watch"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///tether",
        "redis+sentinel://h:26379",
        "redis+sentinel://h:26379/tether/x",
        "redis+sentinel://h:99999/tether",
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(config.ConfigError, match="REDIS_URL"):
        config.load({"SECRET_KEY": KEY, "REDIS_URL": url})


def test_sentinels_and_master_spell_the_same_address() -> None:
    values = config.load(
        {
            "SECRET_KEY": KEY,
            "REDIS_SENTINELS": "a:26379, b:26380",
            "REDIS_SENTINEL_MASTER": "main",
            "REDIS_SENTINEL_PASSWORD": "p w",
        }
    ).values
    url = config.effective_redis_url(values)
    assert url == "redis+sentinel://a:26379,b:26380/main?sentinel_password=p%20w"
    assert parse_sentinel_url(url).sentinel_password == "p w"
    assert sentinel_url(["a"], "m") == "redis+sentinel://a:26379/m"


def test_sentinels_and_a_redis_url_together_are_refused() -> None:
    with pytest.raises(config.ConfigError, match="REDIS_SENTINELS"):
        config.load({"SECRET_KEY": KEY, "REDIS_SENTINELS": "a", "REDIS_URL": "redis://h/0"})
    with pytest.raises(config.ConfigError, match="REDIS_SENTINELS"):
        config.load({"SECRET_KEY": KEY, "REDIS_SENTINELS": "a:port"})


def test_every_client_gets_a_sentinel_pool_for_a_sentinel_url() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:1/tether/2"
    host = layer_host(url, socket_timeout=None)
    assert host["master_name"] == "tether" and host["sentinels"] == [["127.0.0.1", 1]]
    assert (host["db"], host["password"], host["socket_timeout"]) == (2, "pw", None)
    assert "address" not in host
    assert layer_host("redis://h:6379/0") == {"address": "redis://h:6379/0"}
    pool = sync_pool(url, max_connections=3, timeout=1)
    assert isinstance(pool, BlockingSentinelPool) and pool.max_connections == 3
    assert pool.connection_kwargs["db"] == 2
    assert isinstance(async_pool(url, max_connections=3), AsyncBlockingSentinelPool)


def test_the_password_of_a_sentinel_url_is_redacted() -> None:
    cfg = config.load({"SECRET_KEY": KEY, "REDIS_URL": "redis+sentinel://:pw@h:1,g:2/tether"})
    row = next(r for r in config.redacted(cfg) if r["name"] == "REDIS_URL")
    assert "pw" not in row["value"] and row["value"].startswith("redis+sentinel://***@")


# Several servers (docs/deployment.md, "Several Redis servers").


@pytest.mark.parametrize(
    "raw",
    [
        "redis://a:6379 redis://b:6379/2  rediss://c:6380",
        "redis://a:6379,redis://b:6379/2, rediss://c:6380",
        "  redis://a:6379\n redis://b:6379/2\trediss://c:6380 ",
    ],
)
def test_several_servers_are_split_in_order(raw: str) -> None:
    assert split_urls(raw) == ["redis://a:6379", "redis://b:6379/2", "rediss://c:6380"]
    values = config.load({"SECRET_KEY": KEY, "REDIS_URL": raw}).values
    assert values["REDIS_URL"] == "redis://a:6379 redis://b:6379/2 rediss://c:6380"


def test_a_sentinel_url_keeps_its_commas_beside_other_servers() -> None:
    raw = "redis+sentinel://s1:26379,s2:26379/one,redis+sentinel://s3,s4/two redis://c"
    assert split_urls(raw) == [
        "redis+sentinel://s1:26379,s2:26379/one",
        "redis+sentinel://s3,s4/two",
        "redis://c",
    ]
    values = config.load(
        {"SECRET_KEY": KEY, "REDIS_URL": raw, "REDIS_SENTINEL_PASSWORD": "w"}
    ).values
    # The sentinels' password joins each sentinel URL, not the plain server.
    assert config.effective_redis_url(values).split(" ") == [
        "redis+sentinel://s1:26379,s2:26379/one?sentinel_password=w",
        "redis+sentinel://s3,s4/two?sentinel_password=w",
        "redis://c",
    ]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("redis://a:6379 http://b", "expected redis://"),
        ("redis://a:6379 redis://a:6379", "named twice"),
        ("redis://a:6379 redis://b:99999", "port"),
    ],
)
def test_a_bad_server_among_several_is_refused(raw: str, says: str) -> None:
    with pytest.raises(config.ConfigError, match=f"REDIS_URL.*{says}"):
        config.load({"SECRET_KEY": KEY, "REDIS_URL": raw})


def test_each_server_is_redacted_on_its_own() -> None:
    loaded = config.load(
        {"SECRET_KEY": KEY, "REDIS_URL": "redis://:pw1@a:6379 redis://u:pw2@b:6379/1"}
    )
    (row,) = [r for r in config.redacted(loaded) if r["name"] == "REDIS_URL"]
    assert row["value"] == "redis://***@a:6379 redis://***@b:6379/1"


def test_the_ring_is_the_channel_layers_own() -> None:
    """Topics and cache keys land where channels-redis would put the same name."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=["redis://a", "redis://b", "redis://c"])
    names = [f"name-{n}" for n in range(3000)]
    assert [shard_index(n, 3) for n in names] == [layer.consistent_hash(n) for n in names]
    assert {shard_index(n, 3) for n in names} == {0, 1, 2}
    assert {shard_index(n, 1) for n in names} == {0}
