"""Shared fixtures: throwaway services, live daphne nodes in both modes, users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from realtime.rest import quotas
from tests.support.live import DaphneNode, Stack
from tests.support.nginx import make_nginx_front  # noqa: F401 - fixture
from tests.support.pgbouncer import PgBouncer, pgbouncer_service  # noqa: F401 - fixture
from tests.support.services import postgres_service, redis_service  # noqa: F401 - fixtures

MODES = ("embedded", "production")


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """SQLite file + in-memory channel layer: one process, as `make run`."""
    db = tmp_path_factory.mktemp("embedded") / "tether.sqlite3"
    return Stack("embedded", f"sqlite:///{db}")


@pytest.fixture(scope="session")
def production_stack(postgres_service, redis_service) -> Stack:  # noqa: F811
    """PostgreSQL + Redis, shared by every node of the session."""
    return Stack("production", postgres_service.url, redis_service.url)


@pytest.fixture(scope="session")
def pooled_stack(
    postgres_service,  # noqa: F811
    redis_service,  # noqa: F811
    pgbouncer_service: PgBouncer,  # noqa: F811
) -> Stack:
    """The production stack with PostgreSQL reached through PgBouncer in transaction mode."""
    return Stack(
        "pooled",
        pgbouncer_service.url_for(postgres_service.url),
        redis_service.url,
        settings={"DB_TRANSACTION_POOLING": "1"},
    )


@pytest.fixture(params=MODES)
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each integration test runs once per mode."""
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., DaphneNode]]:
    """Start daphne nodes on a stack; all are stopped after the test."""
    nodes: list[DaphneNode] = []

    def start(
        stack: Stack,
        name: str | None = None,
        server: str = "daphne",
        proxy_headers: bool = False,
        **settings: str,
    ) -> DaphneNode:
        node = DaphneNode(
            stack=stack,
            name=name or f"node-{uuid.uuid4().hex[:6]}",
            log_dir=tmp_path,
            settings={k: str(v) for k, v in settings.items()},
            server=server,
            proxy_headers=proxy_headers,
        )
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def node(stack: Stack, make_node: Callable[..., DaphneNode]) -> DaphneNode:
    """One node with default settings, in the parametrized mode."""
    return make_node(stack)


@pytest.fixture
def two_nodes(
    production_stack: Stack, make_node: Callable[..., DaphneNode]
) -> tuple[DaphneNode, DaphneNode]:
    """Two daphne processes on one PostgreSQL and one Redis (reused by later issues)."""
    return make_node(production_stack, "node-a"), make_node(production_stack, "node-b")


STACK_FIXTURES = ("stack", "embedded_stack", "production_stack", "pooled_stack")


@pytest.fixture
def fresh_outbox(request: pytest.FixtureRequest) -> Iterator[None]:
    """No outbox rows but the test's own, on every live stack it uses: the stacks are
    shared by a worker's tests, and a row another test left pending (its receiver or
    push service gone) would reach this test's receiver first, or hold its slots.
    Emptied before, and after its nodes and workers stopped (this fixture is set up
    first where it is autouse, so it is torn down last)."""
    stacks = [request.getfixturevalue(n) for n in STACK_FIXTURES if n in request.fixturenames]

    def empty() -> None:
        for stack in stacks:
            if stack.migrated:
                stack.sql("DELETE FROM realtime_outboxevent")

    empty()
    yield
    empty()


@pytest.fixture
async def runtime() -> AsyncIterator[object]:
    """The node runtime for focused consumer tests, stopped with the test's loop."""
    from realtime.node.runtime import get_runtime

    rt = get_runtime()
    yield rt
    await rt.stop()


@pytest.fixture(autouse=True)
def _generous_auth_throttle(settings) -> None:
    """In-process tests log in often; tests of the throttle lower it themselves."""
    settings.AUTH_RATE_LIMIT = "100000/minute"
    for name, value in quotas.all_off().items():
        setattr(settings, name, value)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """In-process tests on SQLite use a file, as embedded mode does: the in-memory
    shared-cache database pytest-django picks by default locks whole tables and
    fails at once ("database table is locked") when a pool thread writes while
    another thread reads, where a file waits for the lock."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        path = tmp_path_factory.mktemp("unit-db") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)
