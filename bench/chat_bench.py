"""Chat benchmark: stored+acknowledged messages/s and send→ack / send→delivery latency.

100 senders in 50 conversations of 10 members (one socket per member), over
PostgreSQL + Redis, on one or two daphne nodes, at a fixed offered rate or at
saturation. Every receiving socket checks it got each message once, in order.

    .venv/bin/python bench/chat_bench.py --nodes 1 --rate 1000 --duration 10
    .venv/bin/python bench/chat_bench.py --nodes 1 --saturate --duration 10

Uses DATABASE_URL / REDIS_URL when set, else throwaway servers (tests/support/services.py).
Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine_times, process_cpu, steal_percent  # noqa: E402
from realtime.rest.quotas import all_off as quotas_off  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def server_counters(database_url: str, redis_url: str) -> dict[str, float]:
    """PostgreSQL's committed transactions and rows written (this database), Redis'
    commands by name and its CPU: read before and after the run, per message."""
    import psycopg
    import redis

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    counters = dict(
        zip(
            ("pg_commits", "pg_rollbacks", "pg_inserted", "pg_updated", "pg_deleted"),
            row,
            strict=True,
        )
    )
    client = redis.Redis.from_url(redis_url)
    try:
        for name, stats in client.info("commandstats").items():
            counters[f"redis_{name.removeprefix('cmdstat_')}"] = stats["calls"]
        cpu = client.info("cpu")
        counters["redis_cpu_s"] = cpu["used_cpu_sys"] + cpu["used_cpu_user"]
    finally:
        client.close()
    return counters


def per_message(before: dict[str, float], after: dict[str, float], messages: int) -> str:
    """What the servers did per acknowledged message over the run, as one line each."""
    if not messages:
        return "no message acknowledged"
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    pg = ", ".join(
        f"{k.removeprefix('pg_')} {delta[k] / messages:.3f}"
        for k in ("pg_commits", "pg_rollbacks", "pg_inserted", "pg_updated", "pg_deleted")
    )
    commands = sorted(
        ((k.removeprefix("redis_"), v) for k, v in delta.items() if k.startswith("redis_") and v),
        key=lambda kv: -kv[1],
    )
    redis_line = ", ".join(f"{name} {v / messages:.3f}" for name, v in commands if name != "cpu_s")
    return (
        f"PostgreSQL per message: {pg}\n"
        f"Redis per message: {redis_line}; "
        f"Redis CPU {delta.get('redis_cpu_s', 0) * 1e6 / messages:.0f} us"
    )


def seed(database_url: str, conversations: int, members: int) -> list[dict]:
    """Users with tokens and conversations, straight through the ORM (fast)."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("SECRET_KEY", "bench-" + "x" * 50)
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    import django

    django.setup()
    from accounts import credentials
    from accounts.models import User
    from realtime.chat.conversations import new_conversation_id
    from realtime.models import Conversation, Membership

    tag = os.urandom(3).hex()
    users = User.objects.bulk_create(
        [User(username=f"b{tag}-{i}", password="!") for i in range(conversations * members)]
    )
    if users[0].pk is None:  # SQLite does not return ids from bulk_create
        users = list(User.objects.filter(username__startswith=f"b{tag}-").order_by("id"))
    people = []
    for i, user in enumerate(users):
        _, raw = credentials.issue_token(user)
        people.append({"id": user.pk, "token": raw, "index": i})
    for c in range(conversations):
        conv = Conversation.objects.create(
            id=new_conversation_id(),
            kind="group",
            title=f"bench {c}",
            created_by=users[c * members],
        )
        Membership.objects.bulk_create(
            [Membership(conversation=conv, user=u) for u in users[c * members : (c + 1) * members]]
        )
        for person in people[c * members : (c + 1) * members]:
            person["conversation"] = conv.id
    return people


async def run_websockets_worker(
    people: list[dict[str, Any]],
    urls: list[str],
    start_q: Any,
    duration: float,
    rate_per_sender: float,
    window: int,
    out: Any,
) -> None:
    """The `websockets` load generator (`--client websockets`), for comparison."""
    from websockets.asyncio.client import connect

    acks: list[float] = []
    deliveries: list[float] = []
    problems: list[str] = []
    sockets = []
    for p in people:
        ws = await connect(
            f"{urls[p['index'] % len(urls)]}/ws/chat/",
            additional_headers={"Authorization": f"Bearer {p['token']}"},
            max_size=None,
            max_queue=None,
            ping_interval=None,
        )
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        await ws.send('{"type":"sync","id":"s","positions":{}}')  # not resuming: live at once
        while json.loads(await ws.recv())["type"] != "synced":  # its setup is done
            pass
        sockets.append((p, ws))
    out.put(("ready", len(sockets)))
    start_at = await asyncio.to_thread(start_q.get)  # every socket of every worker is up
    cpu_at_start = time.process_time()
    received: dict[int, list[int]] = {}
    sent_count = 0

    async def reader(p, ws, pending):
        try:
            await _reader(p, ws, pending)
        except Exception as exc:
            problems.append(f"reader crashed: {exc!r}")

    async def _reader(p, ws, pending):
        seqs = received.setdefault(p["index"], [])
        async for raw in ws:
            now = time.time()
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "message":
                seqs.append(frame["seq"])
                if frame["sender"]["id"] != p["id"]:
                    deliveries.append(now - json.loads(frame["body"])["t"])
            elif kind == "ack":
                sent = pending.pop(frame["id"], None)
                if sent is not None:
                    acks.append(now - sent[0])
                    sent[1].set()
            elif kind == "ping":
                await ws.send('{"type":"pong"}')
            elif kind == "error":
                problems.append(frame["code"])

    async def sender(p, ws, pending):
        try:
            await _sender(p, ws, pending)
        except Exception as exc:  # a benchmark that hides its failures measures nothing
            problems.append(f"sender crashed: {exc!r}")

    async def _sender(p, ws, pending):
        nonlocal sent_count
        interval = 1.0 / rate_per_sender if rate_per_sender else 0.0
        # Senders start spread over one interval: the offered load is steady,
        # not 100 sends at the same instant every interval.
        offset = random.random() * interval if interval else 0.0
        await asyncio.sleep(max(0.0, start_at + offset - time.time()))
        n = 0
        inflight = asyncio.Semaphore(window)
        next_at = time.time()
        end = start_at + duration
        while time.time() < end:
            if interval:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.time()))
            await inflight.acquire()
            n += 1
            cid = f"{p['index']}-{n}"
            done = asyncio.Event()
            pending[cid] = (time.time(), done)
            asyncio.get_running_loop().create_task(_release(done, inflight))
            body = json.dumps({"t": time.time()})
            await ws.send(
                json.dumps(
                    {"type": "send", "id": cid, "conversation": p["conversation"], "body": body}
                )
            )
            sent_count += 1

    async def _release(done, sem):
        await done.wait()
        sem.release()

    tasks = []
    for p, ws in sockets:
        pending: dict = {}
        tasks.append(asyncio.create_task(reader(p, ws, pending)))
        if p.get("sender"):
            tasks.append(asyncio.create_task(sender(p, ws, pending)))
    # Drain: wait until every socket has been quiet for 2 s (at most 60 s more).
    await asyncio.sleep(max(0.0, start_at + duration - time.time()))
    deadline = time.time() + 60
    while time.time() < deadline:
        seen = sum(len(v) for v in received.values())
        await asyncio.sleep(2)
        if sum(len(v) for v in received.values()) == seen:
            break
    for _, ws in sockets:
        await ws.close()
    for t in tasks:
        t.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put(
        (
            "done",
            {
                "acks": acks,
                "deliveries": deliveries,
                "received": received,
                "sent": sent_count,
                "problems": problems,
                "cpu": usage.ru_utime + usage.ru_stime,
                "cpu_run": time.process_time() - cpu_at_start,
            },
        )
    )


def websockets_worker(
    people: list[dict[str, Any]],
    urls: list[str],
    start_q: Any,
    duration: float,
    rate: float,
    window: int,
    out: Any,
) -> None:
    asyncio.run(run_websockets_worker(people, urls, start_q, duration, rate, window, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1000, help="messages/s offered in all")
    parser.add_argument("--saturate", action="store_true", help="send as fast as acks allow")
    parser.add_argument("--window", type=int, default=4, help="unacknowledged sends per sender")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--senders-per-conversation", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--client",
        choices=("lean", "websockets"),
        default="lean",
        help="load generator: raw asyncio.Protocol (bench/chat_load.py) or websockets",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the lean load generator (auto: uvloop when installed)",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="nodes reach PostgreSQL through PgBouncer in transaction mode",
    )
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="with WEBHOOK_URL set: every message also goes to a receiver on 127.0.0.1",
    )
    parser.add_argument(
        "--delivery-worker",
        action="store_true",
        help="with --webhooks: OUTBOX_DELIVERY=worker, a `manage.py deliver_outbox` "
        "process sends them instead of the nodes",
    )
    args = parser.parse_args()

    from tests.support.live import DaphneNode, Stack
    from tests.support.services import PostgresServer, RedisServer

    redis = RedisServer()
    postgres = PostgresServer()
    redis_url, database_url = redis.start(), postgres.start()
    stack = Stack("production", database_url, redis_url)
    bouncer = None
    if args.pgbouncer:
        from tests.support.pgbouncer import PgBouncer

        # The nodes reach PostgreSQL through PgBouncer in transaction mode; the
        # seeding below still goes straight to the server.
        bouncer = PgBouncer(database_url).start()
        stack = Stack(
            "production",
            bouncer.url_for(database_url),
            redis_url,
            settings={"DB_TRANSACTION_POOLING": "1"},
        )
    logs = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    settings = {
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        # Every load socket comes from 127.0.0.1: no per-address handshake bound.
        "HANDSHAKE_RATE_PER_SECOND": "1000000",
        "HANDSHAKE_BURST": "1000000",
        **quotas_off(),
        "MAX_CONNECTIONS_PER_USER": "5",
    }
    receiver = None
    if args.webhooks:
        from tests.support.receiver import SECRET, Receiver

        receiver = Receiver().start()
        settings.update(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET)
        if args.delivery_worker:
            settings["OUTBOX_DELIVERY"] = "worker"
    nodes = []
    delivery = None
    try:
        stack.migrate()
        nodes = [DaphneNode(stack, f"bench-{i}", logs, settings).start() for i in range(args.nodes)]
        if receiver is not None and args.delivery_worker:
            import subprocess

            delivery = subprocess.Popen(
                [sys.executable, "manage.py", "deliver_outbox", "--poll", "0.2"],
                cwd=ROOT,
                env=stack.env(**settings),
            )
        people = seed(database_url, args.conversations, args.members)
        for i, p in enumerate(people):
            p["sender"] = i % args.members < args.senders_per_conversation
        senders = sum(1 for p in people if p["sender"])
        rate = 0.0 if args.saturate else args.rate / senders
        urls = [n.ws_url for n in nodes]
        out: mp.Queue = mp.Queue()
        start_q: mp.Queue = mp.Queue()
        window = args.window if args.saturate else 1000
        if args.client == "lean":
            from bench.chat_load import worker

            extra = {"loop": args.loop}
        else:
            worker, extra = websockets_worker, {}
        procs = [
            mp.Process(
                target=worker,
                args=(people[i :: args.procs], urls, start_q, args.duration, rate, window, out),
                kwargs=extra,
            )
            for i in range(args.procs)
        ]
        for proc in procs:
            proc.start()
        ready = sum(out.get(timeout=300)[1] for _ in procs)
        start_at = time.time() + 1
        for _ in procs:
            start_q.put(start_at)
        print(f"{ready} sockets connected; {senders} senders; nodes={args.nodes}", flush=True)
        if os.environ.get("BENCH_PROFILE"):
            import subprocess

            subprocess.Popen(
                [
                    str(ROOT / ".venv/bin/py-spy"),
                    "record",
                    "-p",
                    str(nodes[0].proc.pid),
                    "-d",
                    str(int(args.duration)),
                    "-o",
                    os.environ["BENCH_PROFILE"],
                    "-f",
                    "raw",
                    "--gil",
                ],
            )
        node_cpu_before = [process_cpu(n.proc.pid) for n in nodes]
        delivery_cpu = process_cpu(delivery.pid) if delivery is not None else 0.0
        machine_before = machine_times()
        servers_before = server_counters(database_url, redis_url)
        results = [out.get(timeout=args.duration + 120)[1] for _ in procs]
        stolen = steal_percent(machine_before, machine_times())
        servers_after = server_counters(database_url, redis_url)
        node_cpu = [
            process_cpu(n.proc.pid) - b for n, b in zip(nodes, node_cpu_before, strict=True)
        ]
        if delivery is not None:
            delivery_cpu = process_cpu(delivery.pid) - delivery_cpu
        for proc in procs:
            proc.join(10)
        if receiver is not None:
            # What the node delivered by the end of the run, and soon after.
            delivered_at_end = len(receiver.events("conversation.event"))
            time.sleep(5)
            delivered_later = len(receiver.events("conversation.event"))
    finally:
        if delivery is not None:
            delivery.terminate()
            delivery.wait(30)
        for node in nodes:
            node.stop()
        if bouncer is not None:
            bouncer.stop()
        postgres.stop()
        redis.stop()
    acks = [a for r in results for a in r["acks"]]
    deliveries = [d for r in results for d in r["deliveries"]]
    sent = sum(r["sent"] for r in results)
    # Each socket must have each message of its conversation once, in order: as
    # many as the socket that got the most, and (lean client) at least up to the
    # highest seq acknowledged in the conversation.
    per_conv: dict[str, int] = {}
    for r in results:
        for idx, seqs in r["received"].items():
            conv = people[int(idx)]["conversation"]
            per_conv[conv] = max(per_conv.get(conv, 0), len(seqs))
        for idx, seq in r.get("acked", {}).items():
            conv = people[int(idx)]["conversation"]
            per_conv[conv] = max(per_conv.get(conv, 0), seq)
    bad = 0
    for r in results:
        for idx, seqs in r["received"].items():
            expected = per_conv[people[int(idx)]["conversation"]]
            if seqs != list(range(1, expected + 1)):
                bad += 1
    mode = "saturation" if args.saturate else f"offered {args.rate:.0f} msg/s"
    errors = sorted({code for r in results for code in r["problems"]})
    ms = 1000
    print(f"mode: {mode}, duration {args.duration:.0f} s, nodes {args.nodes}")
    print(f"sent {sent}, acknowledged {len(acks)} ({len(acks) / args.duration:.0f} msg/s)")
    print(
        f"send->ack      p50 {percentile(acks, 50) * ms:.1f} ms"
        f"   p99 {percentile(acks, 99) * ms:.1f} ms"
    )
    print(
        f"send->delivery p50 {percentile(deliveries, 50) * ms:.1f} ms"
        f"   p99 {percentile(deliveries, 99) * ms:.1f} ms   ({len(deliveries)} deliveries)"
    )
    print(f"sockets with a gap, repeat or reorder: {bad}; errors: {errors}")
    print(
        f"CPU seconds: nodes {[round(c, 1) for c in node_cpu]}, load generators "
        f"{[round(r['cpu'], 1) for r in results]} "
        f"(from start: {[round(r['cpu_run'], 1) for r in results]})"
    )
    print(f"CPU time taken by the host (steal): {stolen} % of the machine")
    if acks:
        print(
            f"node CPU per acknowledged message: {sum(node_cpu) * 1e3 / len(acks):.3f} ms "
            f"(with its {len(deliveries) / max(1, len(acks)) * 1:.1f} sampled deliveries)"
        )
        print(per_message(servers_before, servers_after, len(acks)))
        print(f"mean ack {statistics.mean(acks) * 1000:.1f} ms")
    if receiver is not None:
        print(
            f"webhook events delivered: {delivered_at_end} by the end, "
            f"{delivered_later} 5 s later (of {len(acks)} acknowledged)"
        )
        if delivery is not None:
            print(f"CPU seconds of the delivery worker: {delivery_cpu:.1f}")
        receiver.stop()


if __name__ == "__main__":
    main()
