"""Password guessing against a live node: fifty tries at once, counted atomically."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.support.live import http
from tests.support.names import unique


def test_fifty_simultaneous_guesses_let_at_most_the_limit_through(
    production_stack, make_node
) -> None:
    # Redis, where nodes count together (in memory the cache's lock makes it atomic).
    node = make_node(production_stack, AUTH_RATE_LIMIT="5/minute")
    name = unique("victim")
    # An attacker's address of its own: failures other tests left counted for 127.0.0.1
    # would otherwise end their window in the middle of this one's.
    attacker = f"127.{random.randint(2, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    # The owner signs up from another (sign-ups are throttled per address too, and
    # other tests' sign-ups from 127.0.0.1 count there on the shared Redis).
    owner = f"127.1.{random.randint(0, 255)}.{random.randint(1, 254)}"
    credentials = {"username": name, "password": "a-Long-pw-0123"}
    status, body, _ = http("POST", f"{node.url}/api/auth/register/", credentials, source=owner)
    assert status == 201, body

    def guess(i: int) -> int:
        body = {"username": name, "password": f"guess-{i}"}
        return http("POST", f"{node.url}/api/auth/token/", body, timeout=30, source=attacker)[0]

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = Counter(pool.map(guess, range(50)))
    # Only the first five reached the password check; the rest were refused before it.
    assert statuses[401] <= 5 and statuses[401] + statuses[429] == 50, statuses
    assert statuses[429] >= 45
    # The name is over its limit, but only for the addresses that failed for it: the
    # owner, from an address of their own, is not locked out.
    assert http("POST", f"{node.url}/api/auth/token/", credentials, source=owner)[0] == 200
