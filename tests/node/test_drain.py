"""The drain's two ends (realtime/node/runtime.py): a node that has drained never
registers itself again, and a daphne node exits soon after its drain whatever
thread is left waiting. Live, under load through nginx:
tests/transport/test_nginx_rolling_restart_live.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest
from channels.db import database_sync_to_async

from realtime.models import Node
from realtime.node import runtime as runtime_module
from tests.support.live import ROOT, node_env

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_drained_node_does_not_start_again_on_a_late_request(runtime) -> None:
    await runtime.ensure_started()
    name = runtime.name
    assert runtime.started
    await runtime.shutdown()
    assert not runtime.started
    # What NodeStartMiddleware does for a request arriving during the stop (one
    # through an nginx keep-alive connection, or a client reconnecting at once).
    await runtime.ensure_started()
    assert not runtime.started and runtime.draining
    assert not await database_sync_to_async(Node.objects.filter(name=name).exists)()


def test_a_thread_left_waiting_does_not_hold_the_exit() -> None:
    script = textwrap.dedent(
        """
        import django, threading
        django.setup()
        from realtime.node.runtime import exit_after_drain
        # A request's worker thread waiting for an event loop that has stopped.
        threading.Thread(target=threading.Event().wait, name="stuck-request").start()
        exit_after_drain("node-x", grace=0.5)
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=node_env(DJANGO_SETTINGS_MODULE="project.settings"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20
    assert "exit held" in done.stderr and "stuck-request" in done.stderr, done.stderr


async def test_a_stop_that_hangs_is_cut_at_its_bound(runtime, monkeypatch, caplog) -> None:
    # A channel layer that no longer answers (Redis gone at the wrong moment) must
    # not hold the exit past SHUTDOWN_BOUND_SECONDS: the records are left to the
    # reapers, as a crashed node's are.
    await runtime.ensure_started()
    hub_stop = runtime.hub.stop

    async def hangs() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(runtime_module, "STOP_SECONDS", 0.3)
    monkeypatch.setattr(runtime.hub, "stop", hangs)
    started = time.monotonic()
    with caplog.at_level("INFO", logger="tether.runtime"):
        await runtime.shutdown()
    assert time.monotonic() - started < 2
    assert "stopping took over" in caplog.text
    monkeypatch.undo()
    await hub_stop()
