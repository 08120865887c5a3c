"""The cache keeps JSON in Redis, never pickles (nothing read back can run code)."""

from __future__ import annotations

import pickle

import redis

from project.cache_json import JSONSerializer
from tests.support.live import http
from tests.support.names import unique

RAN: list[str] = []


def _ran() -> None:
    RAN.append("unpickled")


class Trap:
    def __reduce__(self) -> tuple:
        return (_ran, ())


def test_values_round_trip_and_integers_stay_raw() -> None:
    s = JSONSerializer()
    for value in ([1.5, 2.25], {"a": [1, "b"]}, "text", True, None, 0.0):
        assert s.loads(s.dumps(value)) == value
    assert s.dumps(7) == 7 and s.loads(b"7") == 7  # `incr` works on the raw integer


def test_a_pickle_written_into_redis_is_never_unpickled() -> None:
    assert JSONSerializer().loads(pickle.dumps(Trap())) is None
    assert RAN == []


def test_a_production_node_writes_json_to_redis(production_stack, make_node) -> None:
    node = make_node(production_stack)
    for _ in range(3):  # the login throttle keeps its history in the cache
        http("POST", f"{node.url}/api/auth/token/", {"username": unique(), "password": "x"})
    client = redis.Redis.from_url(production_stack.redis_url)
    keys = [k for k in client.scan_iter(match=":1:*", count=1000)]
    values = [client.get(k) for k in keys]
    assert values, "the throttle stored nothing in Redis"
    assert not [v for v in values if v is not None and v[:1] == b"\x80"]  # pickle's mark
