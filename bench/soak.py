"""Soak: two nodes on PostgreSQL and Redis under a mixed load for minutes; every
resource a node holds must stay flat, and every message be kept and delivered once.

    .venv/bin/python bench/soak.py --minutes 30 [--json var/soak.json]

The load (`bench/soak_load.py`): REST churn at a concurrency of 4 (sign-up,
token, me, groups, messages, lists), chat sockets sending and reconnecting with
`sync`, topic subscribers reconnecting with `since` and a publisher, operators
listing connections and stats. Every few seconds each node is sampled from
outside (`bench/soak_probe.py`): PostgreSQL connections, Redis and database
sockets, RSS, file descriptors, threads; from its `/metrics` asyncio tasks, the
hub's queue and the runtime's state. The run fails when a figure's peak in the
second half exceeds the first half's by more than its margin, when a node holds
more database connections than DB_POOL_SIZE, when the connections do not go
back down once the load stops, when a request fails, or when an acknowledged
message is not stored once and delivered once to every client. Figures, not a
timed test: `tests/node/test_soak_live.py` runs a short version in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import soak_load as load  # noqa: E402
from bench.soak_probe import Probe, Target, growth  # noqa: E402
from realtime.rest.quotas import all_off as quotas_off  # noqa: E402

DB_POOL_SIZE, DB_POOL_MIN = 10, 2
NODE_SETTINGS = {
    "LOG_LEVEL": "WARNING",
    # Users of the soak log in and send far more than a person; limits have their tests.
    "AUTH_RATE_LIMIT": "100000/minute",
    "RATE_LIMIT_PER_SECOND": "1000",
    "RATE_LIMIT_BURST": "1000",
    # Every load socket comes from 127.0.0.1: no per-address handshake bound.
    "HANDSHAKE_RATE_PER_SECOND": "1000000",
    "HANDSHAKE_BURST": "1000000",
    **quotas_off(),
    "DB_POOL_SIZE": str(DB_POOL_SIZE),
    "DB_POOL_MIN": str(DB_POOL_MIN),
    # Idle connections are given back within a few seconds of the load stopping,
    # so the run can show it without waiting minutes (the default is 30 s each).
    "DB_POOL_MAX_IDLE": "3",
}


def seed_people(database_url: str, conversations: int, members: int) -> list[dict[str, Any]]:
    """Chat users with tokens and groups, through the ORM in a child process (fast: no
    password hashing, and this process may already run Django with other settings)."""
    code = (
        "import json, sys; from bench.chat_bench import seed; "
        f"print(json.dumps(seed(sys.argv[1], {conversations}, {members})))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    out = subprocess.run(
        [sys.executable, "-c", code, database_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _port(url: str, default: int) -> int:
    return urlsplit(url).port or default


async def _drive(
    urls: list[str],
    people: list[dict[str, Any]],
    staff_token: str,
    args: argparse.Namespace,
    sample: Callable[[], None],
) -> tuple[load.Tally, list[load.ChatClient], list[load.Subscriber]]:
    tally = load.Tally()
    deadline = time.monotonic() + args.seconds
    session = (args.session / 2, args.session * 1.5)
    clients = []
    for i in range(args.chat_sockets):
        person = people[(i // 2) % len(people)]
        order = urls if i % 2 == 0 else urls[::-1]
        clients.append(
            load.ChatClient(f"chat{i}", person["token"], list(order), [person["conversation"]])
        )
    topics = [f"prices:SOAK{k}" for k in range(5)]
    subscribers = [
        load.Subscriber(
            people[i % len(people)]["token"], urls[i % 2 :] + urls[: i % 2], topics[i % 5]
        )
        for i in range(args.subscribers)
    ]
    tasks = [
        *(
            load.rest_churn(urls, tally, deadline, args.signup_every)
            for _ in range(args.rest_concurrency)
        ),
        *(c.run(tally, deadline, session, args.send_rate) for c in clients),
        *(s.run(tally, deadline, session) for s in subscribers),
        load.publisher(urls, staff_token, topics, tally, deadline, args.publish_rate),
        load.operators(urls, staff_token, tally, deadline),
    ]

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.to_thread(sample)
            await asyncio.sleep(args.sample_every)

    await asyncio.gather(sampler(), *tasks)
    # Everyone resumes once more: what a client still misses now is lost.
    await asyncio.gather(*(c.finish(tally) for c in clients))
    return tally, clients, subscribers


def _check_messages(
    stack: Any, tally: load.Tally, clients: list[load.ChatClient]
) -> dict[str, Any]:
    """Acknowledged means stored once; stored means delivered once to every client."""
    by_client_id: dict[str, set[tuple[str, int]]] = {}
    for key, client_id in tally.acked.items():
        by_client_id.setdefault(client_id, set()).add(key)
    twice = sum(1 for keys in by_client_id.values() if len(keys) > 1)
    convs = sorted({cid for cid, _ in tally.acked})
    stored: dict[tuple[str, int], str] = {}
    for start in range(0, len(convs), 500):
        part = convs[start : start + 500]
        for cid, seq, client_id in stack.sql(
            "SELECT conversation_id, seq, client_id FROM realtime_message "
            "WHERE conversation_id = ANY(%s)",
            part,
        ):
            stored[(cid, seq)] = client_id
    not_stored = sum(1 for key, cid in tally.acked.items() if stored.get(key) != cid)
    heads = dict(
        stack.sql(
            "SELECT id, last_seq FROM realtime_conversation WHERE id = ANY(%s)",
            sorted({c for client in clients for c in client.conversations}),
        )
    )
    duplicates = missing = delivered = 0
    for client in clients:
        for cid in client.conversations:
            got = client.received.get(cid, [])
            delivered += len(got)
            duplicates += len(got) - len(set(got))
            missing += len(set(range(1, heads[cid] + 1)) - set(got))
    return {
        "acknowledged": len(tally.acked),
        "acknowledged_twice": twice,
        "acknowledged_not_stored": not_stored,
        "deliveries": delivered,
        "duplicates": duplicates,
        "missing": missing,
        "reorders": sum(c.reorders for c in clients),
    }


def _quiet(probe: Probe, targets: list[Target], wait: float, rows: list[dict]) -> dict[str, int]:
    """After the load: each node's database connections back down to DB_POOL_MIN."""
    end = time.monotonic() + wait
    while True:
        sample = probe.sample(targets)
        rows.extend(dict(r, phase="quiet") for r in sample)
        now = {r["node"]: r["pg_conns"] for r in sample}
        if all(n <= DB_POOL_MIN for n in now.values()) or time.monotonic() > end:
            return now
        time.sleep(1)  # polling an outside figure that changes by itself


def run_soak(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start services and nodes, run the load, and judge it; the result as a dict."""
    from tests.support.live import DaphneNode, Stack
    from tests.support.services import PostgresServer, RedisServer

    owned: list[Any] = []
    database_url, redis_url = args.database_url, args.redis_url
    if not database_url:
        postgres = PostgresServer()
        owned.append(postgres)
        database_url = postgres.start()
    if not redis_url:
        redis_server = RedisServer()
        owned.append(redis_server)
        redis_url = redis_server.start()
    stack = Stack("production", database_url, redis_url)
    logs = Path(tempfile.mkdtemp(prefix="tether-soak-"))
    tag = os.urandom(2).hex()
    nodes: list[Any] = []
    probe = None
    try:
        stack.migrate()
        nodes = [
            DaphneNode(stack, f"soak-{tag}-{i}", logs, dict(NODE_SETTINGS)).start()
            for i in range(args.nodes)
        ]
        targets = [Target(n.name, n.proc.pid, n.url) for n in nodes]
        probe = Probe(database_url, redis_url, _port(database_url, 5432), _port(redis_url, 6379))
        staff = nodes[0].staff_token(f"soak_ops_{tag}")
        people = seed_people(database_url, max(args.chat_sockets // 10, 1), 5)
        rows: list[dict[str, Any]] = []
        started = time.monotonic()

        def sample() -> None:
            got = probe.sample(targets)
            rows.extend(got)
            line = "  ".join(
                f"{r['node'][-1]}: pg {r['pg_conns']} redis {r['redis_sockets']} "
                f"rss {r['rss_mb']:.0f}M fds {r['fds']} thr {r['threads']} "
                f"tasks {r.get('tasks', 0):.0f} hubq {r.get('hub_queue', 0):.0f}"
                for r in got
            )
            log(f"[{time.monotonic() - started:6.0f}s] {line}")

        log(
            f"soak: {args.nodes} nodes, {args.seconds:.0f} s, REST x{args.rest_concurrency}, "
            f"{args.chat_sockets} chat sockets, {args.subscribers} subscribers; logs in {logs}"
        )
        tally, clients, subscribers = asyncio.run(
            _drive([n.url for n in nodes], people, staff, args, sample)
        )
        quiet = _quiet(probe, targets, args.quiet_wait, rows)
        messages = _check_messages(stack, tally, clients)
        load_rows = [r for r in rows if r.get("phase") != "quiet"]
        trend = growth(load_rows, warmup=args.warmup)
        # The database's view and the node's own sockets: the larger counts.
        peak_pg = {
            n.name: max(
                (max(r["pg_conns"], r["pg_sockets"]) for r in rows if r["node"] == n.name),
                default=0,
            )
            for n in nodes
        }
        server_errors = sum(n for status, n in tally.statuses.items() if status >= 500)
        topics = {
            "publications": tally.publications,
            "received": tally.pubs_received,
            "gaps": sum(s.gaps for s in subscribers),
            "repeats": sum(s.repeats for s in subscribers),
            "recovered": dict(tally.recoveries),
        }
        failures = [
            f"{g['node']} {g['figure']}: {g['first_half_max']} -> {g['second_half_max']}"
            for g in trend
            if not g["ok"]
        ]
        failures += [
            f"{name}: {n} database connections > DB_POOL_SIZE {DB_POOL_SIZE}"
            for name, n in peak_pg.items()
            if n > DB_POOL_SIZE
        ]
        failures += [
            f"{name}: {n} database connections {args.quiet_wait:.0f} s after the load"
            for name, n in quiet.items()
            if n > DB_POOL_MIN
        ]
        if server_errors or tally.problems:
            failures.append(
                f"{server_errors} server errors; {len(tally.problems)} problems: "
                f"{tally.problems[:5]}"
            )
        for key in ("acknowledged_twice", "acknowledged_not_stored", "duplicates", "missing"):
            if messages[key]:
                failures.append(f"messages: {key} = {messages[key]}")
        if topics["gaps"] or topics["repeats"]:
            failures.append(f"topics: {topics['gaps']} gaps, {topics['repeats']} repeats")
        if not messages["acknowledged"] or not tally.pubs_received:
            failures.append(
                "the load did nothing: no message acknowledged or no publication received"
            )
        return {
            "ok": not failures,
            "failures": failures,
            "seconds": args.seconds,
            "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "sends": tally.sends,
            "reconnects": tally.reconnects,
            "messages": messages,
            "topics": topics,
            "peak_pg_conns": peak_pg,
            "quiet_pg_conns": quiet,
            "growth": trend,
            "samples": rows,
        }
    finally:
        if probe is not None:
            probe.close()
        for node in nodes:
            node.stop()
        for service in reversed(owned):
            service.stop()


def report(result: dict[str, Any]) -> str:
    """The figures as a table: per node and figure, first-half and second-half peaks."""
    lines = [
        f"{'node':<14} {'figure':<16} {'1st half max':>12} {'2nd half max':>12} {'last':>8}  ok"
    ]
    for g in result["growth"]:
        lines.append(
            f"{g['node']:<14} {g['figure']:<16} {g['first_half_max']:>12g} "
            f"{g['second_half_max']:>12g} {g['last']:>8g}  {'yes' if g['ok'] else 'NO'}"
        )
    lines.append(
        f"HTTP statuses: {result['statuses']}; sends {result['sends']}, "
        f"reconnects {result['reconnects']}"
    )
    lines.append(f"messages: {result['messages']}")
    lines.append(f"topics: {result['topics']}")
    lines.append(
        f"database connections: peak {result['peak_pg_conns']}, "
        f"after the load {result['quiet_pg_conns']}"
    )
    lines.append("PASS" if result["ok"] else "FAIL:\n  " + "\n  ".join(result["failures"]))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--seconds", type=float, help="overrides --minutes")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--rest-concurrency", type=int, default=4)
    p.add_argument("--signup-every", type=int, default=4, help="REST rounds per sign-up")
    p.add_argument("--chat-sockets", type=int, default=40)
    p.add_argument("--send-rate", type=float, default=1.0, help="sends/s per chat socket")
    p.add_argument("--session", type=float, default=40, help="mean seconds between reconnects")
    p.add_argument("--subscribers", type=int, default=20)
    p.add_argument("--publish-rate", type=float, default=10)
    p.add_argument("--sample-every", type=float, default=5)
    p.add_argument("--warmup", type=float, default=0.1, help="share of samples ignored first")
    p.add_argument("--quiet-wait", type=float, default=60)
    p.add_argument(
        "--database-url", default="", help="default: a fresh database (tests.support.services)"
    )
    p.add_argument("--redis-url", default="", help="default: REDIS_URL or a throwaway server")
    p.add_argument("--json", help="write the result (with every sample) here")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.seconds is None:
        args.seconds = args.minutes * 60
    result = run_soak(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
