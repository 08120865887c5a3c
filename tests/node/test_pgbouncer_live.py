"""Two nodes with PostgreSQL behind Debian's PgBouncer in transaction mode
(DB_TRANSACTION_POOLING, docs/deployment.md): the two-node suites (chat, the
nodes' records and control messages, conversation events with a node killed) hold
as they do on a direct connection, and nodes starting together on a fresh database
migrate it once under a lock a transaction pooler keeps."""

from __future__ import annotations

import inspect
import json
import secrets
import threading
from collections.abc import Callable

import psycopg
import pytest

from tests.chat import test_chat_two_nodes as two_node_chat
from tests.chat import test_events_two_nodes as two_node_events
from tests.node import test_two_nodes as two_node_core
from tests.support.live import DaphneNode, Stack, manage, node_env
from tests.support.names import unique


@pytest.fixture
def pooled_nodes(pooled_stack: Stack, make_node) -> tuple[DaphneNode, DaphneNode]:
    return make_node(pooled_stack, unique("pool-a-")), make_node(pooled_stack, unique("pool-b-"))


def two_node_scenarios() -> list[Callable]:
    """Every test of the two-node suites that needs only two nodes on the production
    stack (`two_nodes`, or `production_stack` and `make_node`): each runs again here
    with PostgreSQL behind the pooler."""
    found = []
    for module in (two_node_chat, two_node_core, two_node_events):
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not inspect.iscoroutinefunction(fn):
                continue
            if list(inspect.signature(fn).parameters) in (
                ["two_nodes"],
                ["production_stack", "make_node"],
            ):
                found.append(fn)
    return found


@pytest.mark.parametrize(
    "scenario", two_node_scenarios(), ids=lambda f: f.__name__.removeprefix("test_")
)
async def test_two_node_suite_through_pgbouncer(
    scenario: Callable, pooled_stack: Stack, make_node
) -> None:
    if "two_nodes" in inspect.signature(scenario).parameters:
        # Named as the `two_nodes` fixture names them (tests/conftest.py).
        await scenario((make_node(pooled_stack, "node-a"), make_node(pooled_stack, "node-b")))
    else:
        await scenario(pooled_stack, make_node)


def test_nodes_starting_together_on_a_fresh_database_migrate_it_once(
    pooled_stack: Stack, postgres_service, make_node
) -> None:
    fresh = f"tether_fresh_{secrets.token_hex(4)}"
    admin = postgres_service.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{fresh}"')
    try:
        stack = Stack(
            "pooled",
            pooled_stack.database_url.rsplit("/", 1)[0] + f"/{fresh}",
            pooled_stack.redis_url,
            settings=pooled_stack.settings,
            # Not migrated by the tests' harness: the nodes' AUTO_MIGRATE does it.
            migrated=True,
        )
        started: list[DaphneNode] = []
        failures: list[BaseException] = []

        def start(name: str) -> None:
            try:
                started.append(make_node(stack, name))
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=start, args=(unique(n),)) for n in ("fa-", "fb-")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures and len(started) == 2, failures
        # Both serve, and no migration is left or was applied twice.
        plan = manage(stack.env(), "showmigrations", "--plan").stdout
        assert "[ ]" not in plan and "[X]" in plan
        applied = stack.sql("SELECT app, name, count(*) FROM django_migrations GROUP BY 1, 2")
        assert applied and all(count == 1 for _, _, count in applied)
        for node in started:
            node.stop()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')


@pytest.mark.parametrize(("pooling", "threshold"), [("1", "None"), ("0", "5")])
def test_prepared_statements_are_off_only_behind_a_transaction_pooler(
    pooling: str, threshold: str
) -> None:
    env = node_env(
        DATABASE_URL="postgresql://tether@127.0.0.1:1/tether", DB_TRANSACTION_POOLING=pooling
    )
    code = (
        "from django.conf import settings; import json; "
        "print(json.dumps(repr(settings.DATABASES['default']['OPTIONS']['prepare_threshold'])))"
    )
    out = manage(env, "shell", "-c", code).stdout.strip().splitlines()[-1]
    assert json.loads(out) == threshold
