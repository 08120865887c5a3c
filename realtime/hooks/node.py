"""Outbox delivery on every node (a `NodePart`, added by realtime/apps.py), or in
delivery workers (`OUTBOX_DELIVERY=worker`, realtime/hooks/worker.py): webhooks and
Web Push.

One task per node claims due events (realtime/hooks/queue.py) for its free
slots, sends each with one shared httpx client (connections kept alive, at most
`WEBHOOK_CONCURRENCY` requests in flight), and writes the results back together.
A webhook goes to `WEBHOOK_URL`; a push row (realtime/hooks/pushes.py) to its
subscription's push service. The database work, and a push's encryption, run on
the pool threads (docs/architecture.md, rule 7); the chat path only writes rows
and, after its commit, wakes this task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httpx
from django.conf import settings

from monitoring import metrics
from realtime.hooks import outbox, pushes, queue, signing
from realtime.hooks.queue import Claimed, Outcome
from realtime.node.db import in_pool
from realtime.push import subscriptions

if TYPE_CHECKING:
    from realtime.node.runtime import NodeRuntime

log = logging.getLogger("tether.webhooks")

# How often a node looks for due events when nothing woke it: events written on
# other nodes, and retries coming due.
POLL_SECONDS = 1.0
# Events claimed per request slot: the next ones are at hand when a request ends,
# instead of a claim's round trip later.
CLAIM_AHEAD = 2
# How long a pass waits for more answers when requests are still in flight.
COALESCE_SECONDS = 0.005


class Delivery:
    """The node's (or a worker's) delivery task and its in-flight requests."""

    def __init__(self, poll_seconds: float = POLL_SECONDS) -> None:
        self.poll_seconds = poll_seconds
        # Set by `stop()`: claim nothing more, finish what is in flight, write back.
        self.stopping = False
        # Without a webhook URL only pushes are claimed: webhook rows written before
        # the URL was unset wait for it to come back.
        self.only_type = "" if outbox.enabled() else outbox.PUSH_MESSAGE
        self.concurrency = settings.WEBHOOK_CONCURRENCY
        self.timeout = float(settings.WEBHOOK_TIMEOUT)
        # An event claimed may first wait for a free request slot behind the others
        # claimed: at most one request's time for each of CLAIM_AHEAD rounds.
        self.lease = CLAIM_AHEAD * self.timeout + queue.LEASE_MARGIN_SECONDS
        self.slots = asyncio.Semaphore(self.concurrency)
        # Events held by this node: sending, or waiting for a request slot.
        self.in_flight: set[asyncio.Task[None]] = set()
        self._done: list[Outcome] = []
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def wake(self) -> None:
        """Look for due events now (from any thread: called after commits)."""
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: the node stopped
            pass

    async def run(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(
            limits=limits, timeout=self.timeout, follow_redirects=False
        ) as client:
            try:
                while not (self.stopping and not self.in_flight and not self._done):
                    try:
                        await self._cycle(client)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # The database is away: what was leased comes back after the lease.
                        log.exception("outbox delivery pass failed")
                        if self.stopping:
                            return  # the leases bring the rest back to another process
                        await asyncio.sleep(self.poll_seconds)
            finally:
                for task in self.in_flight:
                    task.cancel()

    async def _cycle(self, client: httpx.AsyncClient) -> None:
        self._wake.clear()
        done, self._done = self._done, []
        if done:
            try:
                await in_pool(queue.finish)(done)
            except Exception:
                self._done = done + self._done  # written with the next pass's
                raise
        free = 0 if self.stopping else CLAIM_AHEAD * self.concurrency - len(self.in_flight)
        claimed = await in_pool(queue.claim)(free, self.lease, self.only_type) if free > 0 else []
        push_rows = [e for e in claimed if e.type == outbox.PUSH_MESSAGE]
        prepared = await in_pool(pushes.prepare)(push_rows) if push_rows else {}
        for event in claimed:
            job = (
                self._push(client, event, prepared[event.id])
                if event.id in prepared
                else self._deliver(client, event)
            )
            task = asyncio.get_running_loop().create_task(job)
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        try:
            # A finished request or a local commit wakes the task at once.
            await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        except TimeoutError:
            return
        if self.in_flight:
            # More answers are on their way: write them back and claim together, one
            # pool call and transaction for several events instead of two per event.
            await asyncio.sleep(COALESCE_SECONDS)

    async def _deliver(self, client: httpx.AsyncClient, event: Claimed) -> None:
        raw = signing.body(event.event_id, event.type, event.ts, event.data)
        headers = signing.headers(settings.WEBHOOK_SECRET, event.event_id, int(time.time()), raw)
        status: int | None = None
        try:
            # httpx's timeout bounds each phase; the setting bounds the request in all.
            async with self.slots, asyncio.timeout(self.timeout):
                response = await client.post(settings.WEBHOOK_URL, content=raw, headers=headers)
            status = response.status_code
            delivered = 200 <= status < 300
            error = "" if delivered else f"HTTP {status}: {response.text[:200]}"
            outcome = "delivered" if delivered else "http_error"
        except (TimeoutError, httpx.TimeoutException):
            delivered, error, outcome = False, f"no answer within {self.timeout:g}s", "timeout"
        except httpx.HTTPError as exc:
            delivered, error = False, f"{type(exc).__name__}: {exc}"
            outcome = "connection_error"
        except Exception as exc:  # anything else is retried as well, and logged
            log.exception("webhook event %s: request failed", event.event_id)
            delivered, error, outcome = False, f"{type(exc).__name__}: {exc}", "connection_error"
        self._settle(event, delivered, status, error, outcome)

    async def _push(self, client: httpx.AsyncClient, event: Claimed, job: pushes.Prepared) -> None:
        """One push (PROTOCOL 14): 404/410 remove the subscription, 429 and 5xx are
        retried no sooner than `Retry-After`, other errors are given up."""
        if job.request is None:  # not sent: its subscription is gone, or its endpoint refused
            if job.action != pushes.DROP:
                metrics.PUSH_ATTEMPTS.labels("refused").inc()
            retry_at = (
                queue.next_attempt(event, settings.WEBHOOK_MAX_AGE)
                if job.action == pushes.RETRY
                else None
            )
            dropped = job.action == pushes.DROP
            self._finish(
                Outcome(event.id, event.attempts, False, None, job.error, retry_at, dropped)
            )
            return
        status: int | None = None
        wait, retry, gone, delivered = 0.0, True, False, False
        try:
            async with self.slots, asyncio.timeout(self.timeout):
                response = await client.post(
                    job.request.url, content=job.request.body, headers=job.request.headers
                )
            status = response.status_code
            answer = pushes.verdict(status, response.headers.get("Retry-After"))
            delivered, gone, retry, wait = (
                answer.delivered,
                answer.gone,
                answer.retry,
                answer.retry_after,
            )
            error = "" if delivered else f"HTTP {status}: {response.text[:200]}"
            outcome = "delivered" if delivered else "gone" if gone else "http_error"
        except (TimeoutError, httpx.TimeoutException):
            error, outcome = f"no answer within {self.timeout:g}s", "timeout"
        except httpx.HTTPError as exc:
            error, outcome = f"{type(exc).__name__}: {exc}", "connection_error"
        except Exception as exc:  # anything else is retried as well, and logged
            log.exception("push %s: request failed", event.event_id)
            error, outcome = f"{type(exc).__name__}: {exc}", "connection_error"
        metrics.PUSH_ATTEMPTS.labels(outcome).inc()
        if gone:
            try:
                await in_pool(subscriptions.remove)(job.subscription_id)
            except Exception:  # the database is away: the next push's 410 removes it
                log.exception("push subscription %s: removal failed", job.subscription_id)
            log.info("push subscription %s removed: %s", job.subscription_id, error)
        retry_at = (
            queue.next_attempt(event, settings.WEBHOOK_MAX_AGE, at_least=wait)
            if retry and not delivered and not gone
            else None
        )
        if not delivered and not gone and retry_at is None:
            log.warning("push %s given up: %s", event.event_id, error)
        self._finish(Outcome(event.id, event.attempts, delivered, status, error, retry_at, gone))

    def _settle(
        self, event: Claimed, delivered: bool, status: int | None, error: str, outcome: str
    ) -> None:
        """Count the attempt and keep its result for the next write-back."""
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        retry_at = None if delivered else queue.next_attempt(event, settings.WEBHOOK_MAX_AGE)
        if delivered or retry_at is None:
            metrics.WEBHOOK_DELIVERIES.labels("delivered" if delivered else "failed").inc()
            metrics.WEBHOOK_EVENT_ATTEMPTS.observe(event.attempts)
            if not delivered:
                log.warning("webhook event %s given up: %s", event.event_id, error)
        self._finish(Outcome(event.id, event.attempts, delivered, status, error, retry_at))

    def _finish(self, outcome: Outcome) -> None:
        self._done.append(outcome)
        self._wake.set()

    def stop(self) -> None:
        """Claim nothing more; `run()` returns once what is in flight is answered (each
        within `WEBHOOK_TIMEOUT`) and written back."""
        self.stopping = True
        self._wake.set()


async def maintain_outbox() -> None:
    """Prune finished rows and set the webhook backlog's gauges. Push rows are written
    with or without a webhook URL: the pruning runs either way; the gauges are the
    webhooks' (pushes have tether_push_attempts_total)."""
    await in_pool(queue.prune)()
    if not outbox.enabled():
        return
    backlog = await in_pool(queue.backlog)(outbox.PUSH_MESSAGE)
    metrics.WEBHOOK_PENDING.set(backlog.pending)
    metrics.WEBHOOK_FAILED.set(backlog.failed)
    metrics.WEBHOOK_OLDEST_PENDING.set(backlog.oldest_pending_seconds)


class HooksNode:
    """Outbox delivery on every node (pushes always, webhooks where `WEBHOOK_URL` is
    set) unless workers deliver (`OUTBOX_DELIVERY=worker`); the pruning and the
    webhook backlog's gauges either way."""

    def __init__(self) -> None:
        self.delivery: Delivery | None = None

    def start(self, runtime: NodeRuntime) -> None:
        if settings.OUTBOX_DELIVERY != "nodes":
            return  # the rows wait for `manage.py deliver_outbox`
        self.delivery = Delivery()
        runtime.run_in_background(self.delivery.run(), "tether-webhooks")

    async def maintain(self, runtime: NodeRuntime) -> None:
        await maintain_outbox()

    async def recheck_users(self, user_ids: Iterable[int]) -> None:
        return None  # presence events are written where presence changes

    def sizes(self) -> dict[str, int]:
        return {"webhooks_in_flight": len(self.delivery.in_flight) if self.delivery else 0}

    def wake(self) -> None:
        """Events were committed on this node: deliver them without waiting for a poll."""
        if self.delivery is not None:
            self.delivery.wake()


hooks_node = HooksNode()
