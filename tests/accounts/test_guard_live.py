"""Password guessing against a live node: fifty tries at once, counted atomically."""

from __future__ import annotations

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
    http("POST", f"{node.url}/api/auth/register/", {"username": name, "password": "a-Long-pw-0123"})

    def guess(i: int) -> int:
        body = {"username": name, "password": f"guess-{i}"}
        return http("POST", f"{node.url}/api/auth/token/", body, timeout=30)[0]

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = Counter(pool.map(guess, range(50)))
    # Only the first five reached the password check; the rest were refused before it.
    assert statuses[401] <= 5 and statuses[401] + statuses[429] == 50, statuses
    assert statuses[429] >= 45
