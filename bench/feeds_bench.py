"""Feeds fan-out benchmark: Tether's /ws/stream/ against a plain Channels consumer.

Side by side in one run, same server (daphne), same channel layer
(channels-redis, production mode: PostgreSQL + Redis), loopback only:

  fixed       N subscribers on one topic, one publisher at --rate publications/s
  saturation  the same subscribers, the publisher as fast as it can while at most
              --window publications are ahead of the slowest subscriber (closed loop)
  idle        --idle authenticated idle connections: daphne RSS growth per
              connection and connections accepted per second

    .venv/bin/python bench/feeds_bench.py                 # both targets, full size
    .venv/bin/python bench/feeds_bench.py --quick         # smoke run, < 1 minute
    .venv/bin/python bench/feeds_bench.py --target plain --subscribers 1000 --rate 20

With BENCH_PROFILE=<dir> (and py-spy installed in .venv), py-spy records where
the server's GIL time goes while the idle connections open (<dir>/<target>-idle.txt).

Needs PostgreSQL (--pg, trust auth; the database --db is dropped and recreated)
and Redis (--redis, a db number that is flushed). Stops by itself and stops
every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing as mp
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine_times, process_cpu, stat_cpu, steal_percent  # noqa: E402
from bench.wsload import percentile, raise_nofile, worker_main  # noqa: E402
from realtime.rest.quotas import all_off as quotas_off  # noqa: E402

PLAIN_PATH = "/ws/plain/"
# Tether plus the plain Channels baseline at PLAIN_PATH (bench/plain_asgi.py).
APP = "bench.plain_asgi:application"
STREAM_PATH = "/ws/stream/"
TOPIC = "prices:bench"
BENCH_USER = "feeds-bench"


def log(msg: str) -> None:
    print(f"[feeds {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------- backing services


def fresh_database(pg: str, name: str) -> str:
    """DROP and CREATE database `name` on the server at `pg`; its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{pg}/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{pg}/{name}"


def flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as conn:
        conn.flushdb()


def redis_cpu(url: str) -> float:
    """CPU seconds of the Redis server so far (shared server: other work counts too)."""
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as conn:
        info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_calls(url: str) -> dict[str, int]:
    """Redis' calls so far, by command (`INFO commandstats`; scripts' inner commands
    count under their own names)."""
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as conn:
        stats = conn.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def bench_tokens(env: dict[str, str], users: int) -> list[str]:
    """`users` users, each with an API token (the first through `manage.py issue_token`)."""
    from tests.support.live import manage

    names = [BENCH_USER] + [f"{BENCH_USER}-{i}" for i in range(1, users)]
    manage(
        env,
        "shell",
        "-c",
        "from accounts.models import User\n"
        f"User.objects.bulk_create([User(username=n, password='!') for n in {names!r}])",
    )
    tokens = [manage(env, "issue_token", BENCH_USER, "--name", "feeds-bench").stdout.strip()]
    if users > 1:
        script = (
            "import json\n"
            "from accounts import credentials\n"
            "from accounts.models import User\n"
            f"users = User.objects.filter(username__in={names[1:]!r}).order_by('id')\n"
            "print(json.dumps([credentials.issue_token(u, name='feeds-bench')[1] for u in users]))"
        )
        tokens += json.loads(manage(env, "shell", "-c", script).stdout.strip().splitlines()[-1])
    assert len(tokens) == users and all(tokens), "could not issue the benchmark tokens"
    return tokens


# --------------------------------------------------------------------- the node


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread (the event loop) and of its other threads
    (the database pool): they share one GIL, so together they bound the process."""
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            seconds = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
            if int(tid) == pid:
                main += seconds
            else:
                other += seconds
    return main, other


def services_cpu() -> float:
    """CPU seconds of every PostgreSQL and Redis process on the machine."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/comm") as fh:
                name = fh.read()
            if name.startswith(("postgres", "redis")):
                total += stat_cpu(f"/proc/{pid}/stat")
    return total


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class BenchNode:
    """One server process (daphne or uvicorn) on a loopback port, in its own session."""

    def __init__(
        self, stack: Any, server: str, logs: Path, settings: dict[str, str], backlog: int = 0
    ) -> None:
        self.stack, self.server, self.logs, self.settings = stack, server, logs, settings
        self.backlog = backlog  # listen backlog; 0: the server's default
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, name: str) -> BenchNode:
        from tests.support.live import http
        from tests.support.services import free_port

        self.port = free_port()
        env = self.stack.env(NODE_NAME=name, **self.settings)
        if self.server == "daphne" and self.backlog:
            # As docs/deployment.md runs it: a Twisted endpoint with a listen backlog.
            endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog={self.backlog}"
            cmd = [sys.executable, "-m", "daphne", "-e", endpoint]
            cmd += ["--websocket_timeout", "-1", APP]
        elif self.server == "daphne":
            cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            cmd += ["--websocket_timeout", "-1", APP]
        else:
            cmd = [sys.executable, "-m", "uvicorn", APP]
            cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--ws", "websockets-sansio"]
            if self.backlog:
                cmd += ["--backlog", str(self.backlog)]
            cmd += ["--lifespan", "off", "--no-access-log", "--log-level", "warning"]
            cmd += ["--loop", "asyncio"]  # as docs/deployment.md runs it (uvloop measured slower)
        self.log_path = self.logs / f"{name}.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited early; log: {self.log_path}")
            with contextlib.suppress(OSError):
                if http("GET", f"http://127.0.0.1:{self.port}/health/", timeout=2)[0] == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.server} not healthy in 60 s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, 15)
        self.proc = None


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group of `proc` (started with its own session), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# ------------------------------------------------------------ load generators


class Workers:
    """The load-generator processes, driven over pipes."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("fork")
        self.pipes = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def ask(self, messages: list[tuple], timeout: float) -> list[Any]:
        for pipe, message in zip(self.pipes, messages, strict=True):
            pipe.send(message)
        answers = []
        started = time.monotonic()
        deadline = started + timeout
        next_note = started + 15
        for pipe in self.pipes:
            while not pipe.poll(max(0.0, min(deadline, next_note) - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"load generator did not answer {messages[0][0]!r} in time")
                log(f"  … still waiting for {messages[0][0]} ({time.monotonic() - started:.0f} s)")
                next_note += 15
            answers.append(pipe.recv()[1])
        return answers

    def all(self, message: tuple, timeout: float) -> list[Any]:
        return self.ask([message] * len(self.pipes), timeout)

    def connect(self, params: dict[str, Any], total: int, sample: int, inflight: int) -> dict:
        k = len(self.pipes)
        messages = []
        first = 0
        for i in range(k):
            count = total // k + (1 if i < total % k else 0)
            share = sample // k + (1 if i < sample % k else 0)
            p = dict(params, count=count, sample=share, inflight=max(1, inflight // k), first=first)
            messages.append(("connect", p))
            first += count
        answers = self.ask(messages, 600)
        return {
            "ok": sum(a["ok"] for a in answers),
            "failed": merge([a["failed"] for a in answers]),
            "seconds": max(a["t1"] for a in answers) - min(a["t0"] for a in answers),
            "cpu": [round(a["cpu"], 2) for a in answers],
        }

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("exit", None))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = out.get(key, 0) + value
    return out


# ------------------------------------------------------------------ publisher


class Publisher:
    def __init__(self, env: dict[str, str], logs: Path, args: list[str]) -> None:
        self.err = open(logs / "publisher.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "feeds_publisher.py"), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            start_new_session=True,
        )

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith("BENCH "):
                    return json.loads(line[6:])
            elif self.proc.poll() is not None:
                break
        raise RuntimeError("publisher failed; see publisher.log in the log directory")

    def go(self, start_at: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"start_at": start_at}) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        stop_group(self.proc, 5)
        self.err.close()


# ------------------------------------------------------------------ scenarios


def probe_tether(port: int, token: str) -> str:
    """'' when /ws/stream/ answers `subscribe` with `subscribed`, else why not."""
    import asyncio

    from websockets.asyncio.client import connect

    async def probe() -> str:
        async with connect(
            f"ws://127.0.0.1:{port}{STREAM_PATH}",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=10,
        ) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if welcome.get("type") != "welcome":
                return f"no welcome: {welcome}"
            await ws.send(json.dumps({"type": "subscribe", "id": "p", "topic": "prices:probe"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if reply.get("type") != "subscribed":
                return f"subscribe answered {reply.get('type')} {reply.get('code', '')}".strip()
            return ""

    try:
        return asyncio.run(probe())
    except Exception as exc:
        return f"probe failed: {exc!r}"


def fanout(
    target: str,
    mode: str,
    node: BenchNode,
    workers: Workers,
    env: dict[str, str],
    logs: Path,
    args: argparse.Namespace,
    subscribers: int,
) -> dict[str, Any]:
    """One fan-out scenario over the subscribers already connected."""
    rate = args.rate if mode == "fixed" else 0
    publisher = Publisher(
        env,
        logs,
        [
            "--target",
            target,
            "--rate",
            str(rate),
            "--seconds",
            str(args.seconds),
            "--window",
            str(args.window),
            "--workers",
            str(len(workers.pipes)),
        ],
    )
    try:
        ready = publisher.read(120)
        workers.all(("measure", ready["feedback_port"] or None), 30)
        cpu0, rcpu0, t0 = process_cpu(node.pid), redis_cpu(args.redis), time.monotonic()
        calls0 = redis_calls(args.redis)
        machine0 = machine_times()
        publisher.go(time.time() + 0.3)
        log(f"{target} {mode}: publishing for {args.seconds:g} s …")
        done = publisher.read(args.seconds + 120)
        published = done["published"]
        log(f"{target} {mode}: {published} publications; draining …")
        results = workers.all(("drain", published, args.quiet, 120), 180)
        wall = time.monotonic() - t0
        server_cpu, r_cpu = process_cpu(node.pid) - cpu0, redis_cpu(args.redis) - rcpu0
        calls = {k: v - calls0.get(k, 0) for k, v in redis_calls(args.redis).items()}
        stolen = steal_percent(machine0, machine_times())
    finally:
        publisher.stop()
    received = sum(r["received"] for r in results)
    last_ns = max((r["last_ns"] for r in results), default=0)
    span = (last_ns / 1e9 - done["t_start"]) if last_ns else float("nan")
    latencies = [x for r in results for x in r["latencies"]]
    first_seqs = sorted({s for r in results for s in r["first_seqs"]})
    expected_first = 0
    if target == "tether" and done.get("first"):
        expected_first = done["first"]["offset"]
    late_start = sum(1 for s in first_seqs if s != expected_first)
    pub_span = done["t_end"] - done["t_start"]
    return {
        "target": target,
        "scenario": mode,
        "server": args.server,
        "subscribers": subscribers,
        "publications": published,
        "pubs_per_s": round(published / pub_span, 1) if pub_span else None,
        "offered_per_s": round(args.rate * subscribers) if mode == "fixed" else None,
        "window": args.window if mode == "saturation" else None,
        "expected": published * subscribers,
        "received": received,
        "deliveries_per_s": round(received / span) if span and span == span else None,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "latency_samples": len(latencies),
        "steal_pct": stolen,
        "loss": sum(r["loss"] for r in results),
        "extra": sum(r["extra"] for r in results),
        "short_subscribers": sum(r["short"] for r in results),
        "sampled_duplicates": sum(r["duplicates"] for r in results),
        "sampled_reorders": sum(r["reorders"] for r in results),
        "sampled_gaps": sum(r["gaps"] for r in results),
        "sampled_wrong_first": late_start,
        "other_frames": merge([r["other"] for r in results]),
        "dropped_sockets": merge([r["dropped"] for r in results]),
        "wall_s": round(wall, 2),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "redis_cpu_s": round(r_cpu, 2),
        # Per publication: Redis' commands (the publisher's and the node's), and
        # the node's CPU per delivery (docs/scaling.md).
        "redis_calls_per_publication": {
            k: round(v / published, 2) for k, v in sorted(calls.items()) if v and published
        },
        "redis_cpu_us_per_publication": round(r_cpu * 1e6 / published, 1) if published else None,
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / received, 2) if received else None,
        "loadgen_cpu_pct": [round(100 * r["cpu"] / r["wall"], 1) for r in results],
        "loadgen_cpu_s": [round(r["cpu"], 2) for r in results],
        "publisher_cpu_pct": round(100 * done["cpu"] / pub_span, 1) if pub_span else None,
        "publish_call_p50_ms": done["call_p50_ms"] and round(done["call_p50_ms"], 2),
        "publisher_errors": done["errors"],
    }


def profile(pid: int, label: str) -> subprocess.Popen | None:
    """With BENCH_PROFILE=<dir>, py-spy samples the server (raw folded stacks, GIL holders)."""
    where = os.environ.get("BENCH_PROFILE")
    if not where:
        return None
    out = Path(where) / f"{label}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(spy), "record", "-p", str(pid), "-o", str(out), "-f", "raw", "--gil", "-r", "250"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def idle(
    target: str, node: BenchNode, workers: Workers, tokens: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    params = {
        "host": "127.0.0.1",
        "port": node.port,
        "tokens": tokens,
        "path": PLAIN_PATH if target == "plain" else STREAM_PATH,
        "kind": target,
        "subscribe": False,
    }
    # Warm up (lazy imports, connection pools, first allocations), then measure.
    workers.connect(params, 50, 0, 50)
    workers.all(("close", None), 60)
    time.sleep(2)
    rss0 = proc_rss_kib(node.pid)
    cpu0 = process_cpu(node.pid)
    log(f"{target} idle: opening {args.idle} connections, {args.inflight} in flight …")
    profiler = profile(node.pid, f"{target}-idle")
    split0, services0, machine0 = cpu_split(node.pid), services_cpu(), machine_times()
    opened = workers.connect(params, args.idle, 0, args.inflight)
    split1, services = cpu_split(node.pid), services_cpu() - services0
    stolen = steal_percent(machine0, machine_times())
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)
    cpu = process_cpu(node.pid) - cpu0
    time.sleep(3)  # let buffers and background work settle
    rss1 = proc_rss_kib(node.pid)
    workers.all(("close", None), 120)
    ok = opened["ok"]
    return {
        "target": target,
        "scenario": "idle",
        "server": args.server,
        "connections": ok,
        "users": args.users,
        "failed": opened["failed"],
        "seconds_to_all_ready": round(opened["seconds"], 2),
        "accepted_per_s": round(ok / opened["seconds"]) if opened["seconds"] else None,
        "rss_before_mib": round(rss0 / 1024, 1),
        "rss_after_mib": round(rss1 / 1024, 1),
        "kib_per_connection": round((rss1 - rss0) / ok, 1) if ok else None,
        "server_cpu_s": round(cpu, 2),
        "server_loop_thread_cpu_s": round(split1[0] - split0[0], 2),
        "server_other_threads_cpu_s": round(split1[1] - split0[1], 2),
        "postgres_redis_cpu_s": round(services, 2),
        "loadgen_cpu_s": opened["cpu"],
        "steal_pct": stolen,
    }


# --------------------------------------------------------------------- output


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "/".join(fmt(v) for v in value)
    return str(value)


def print_tables(rows: list[dict[str, Any]]) -> None:
    fan = [r for r in rows if r["scenario"] in ("fixed", "saturation")]
    if fan:
        cols = [
            ("target", "target"),
            ("scenario", "scenario"),
            ("subs", "subscribers"),
            ("pubs/s", "pubs_per_s"),
            ("deliv/s", "deliveries_per_s"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("max ms", "max_ms"),
            ("loss", "loss"),
            ("dup/reord", "dupreord"),
            ("srv CPU%", "server_cpu_pct"),
            ("steal %", "steal_pct"),
            ("loadgen CPU%", "loadgen_cpu_pct"),
            ("pub CPU%", "publisher_cpu_pct"),
        ]
        table(
            cols, [dict(r, dupreord=r["sampled_duplicates"] + r["sampled_reorders"]) for r in fan]
        )
    idle_rows = [r for r in rows if r["scenario"] == "idle"]
    if idle_rows:
        cols = [
            ("target", "target"),
            ("conns", "connections"),
            ("accepted/s", "accepted_per_s"),
            ("RSS before MiB", "rss_before_mib"),
            ("RSS after MiB", "rss_after_mib"),
            ("KiB/conn", "kib_per_connection"),
            ("srv CPU s", "server_cpu_s"),
            ("loop thread s", "server_loop_thread_cpu_s"),
            ("other threads s", "server_other_threads_cpu_s"),
            ("PG+Redis s", "postgres_redis_cpu_s"),
            ("steal %", "steal_pct"),
            ("failed", "failed"),
        ]
        table(cols, idle_rows)
    for r in fan:
        print(
            f"{r['target']} {r['scenario']}: node CPU {r['server_cpu_us_per_delivery']} us per "
            f"delivery; Redis per publication: {r['redis_calls_per_publication']}, "
            f"{r['redis_cpu_us_per_publication']} us of CPU"
        )
    for r in rows:
        if r["scenario"] == "skipped":
            print(f"{r['target']}: skipped ({r['reason']})")


def table(cols: list[tuple[str, str]], rows: list[dict[str, Any]]) -> None:
    cells = [[fmt(r.get(key)) for _, key in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
    print()
    print("  ".join(h.rjust(w) for (h, _), w in zip(cols, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))
    print()


# ----------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=["plain", "tether", "both"], default="both")
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20, help="publications/s (fixed scenario)")
    parser.add_argument("--seconds", type=float, default=10, help="publishing time per scenario")
    parser.add_argument("--window", type=int, default=4, help="saturation: publications ahead")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (0: skip)")
    parser.add_argument("--inflight", type=int, default=200, help="handshakes in flight")
    parser.add_argument(
        "--backlog",
        type=int,
        default=1024,
        help="server listen backlog, as docs/deployment.md sets it (0: the server's default, "
        "50 for daphne, where handshakes in flight beyond it wait for SYN retransmits)",
    )
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--users", type=int, default=1, help="users (one token each) the sockets are spread over"
    )
    parser.add_argument("--sample", type=int, default=50, help="subscribers that decode JSON")
    parser.add_argument("--quiet", type=float, default=3, help="drain: s without progress")
    parser.add_argument(
        "--scenarios", default="fixed,saturation,idle", help="comma-separated subset"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="tether_bench_feeds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--json", type=Path, help="also write the JSON lines to this file")
    args = parser.parse_args()
    if args.quick:
        args.subscribers, args.seconds, args.idle, args.sample = 100, 3, 300, 20
    for url in (args.pg, args.redis):
        host = url.split("@")[-1].split("://")[-1].split("/")[0].split(":")[0]
        if host not in ("127.0.0.1", "localhost"):
            parser.error(f"loopback only: {url}")
    return args


def main() -> None:
    args = parse_args()
    nofile = raise_nofile()
    need = max(args.subscribers, args.idle) + 200
    if nofile < need:
        sys.exit(f"open-files limit {nofile} < {need}: raise the hard limit (ulimit -Hn)")
    if args.server == "uvicorn" and importlib.util.find_spec("uvicorn") is None:
        sys.exit("--server uvicorn: uvicorn is not installed (pip install 'uvicorn[standard]')")
    targets = ["plain", "tether"] if args.target == "both" else [args.target]
    scenarios = set(args.scenarios.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tests.support.live import Stack

    logs = Path(tempfile.mkdtemp(prefix="tether-feeds-bench-"))
    log(f"logs in {logs}; fresh database {args.db}, flushing {args.redis}")
    database_url = fresh_database(args.pg, args.db)
    flush_redis(args.redis)
    stack = Stack("production", database_url, args.redis)
    stack.migrate()
    env = stack.env(LOG_LEVEL="WARNING")
    tokens = bench_tokens(env, args.users)
    token = tokens[0]
    settings = {
        "LOG_LEVEL": "WARNING",
        "MAX_CONNECTIONS": "100000",
        "MAX_CONNECTIONS_PER_USER": "100000",
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        # Every load socket comes from 127.0.0.1: no per-address handshake bound.
        "HANDSHAKE_RATE_PER_SECOND": "1000000",
        "HANDSHAKE_BURST": "1000000",
        **quotas_off(),
        "HEARTBEAT_INTERVAL": "3600",
        "PING_TIMEOUT": "7200",
    }
    pub_env = stack.env(**settings)
    rows: list[dict[str, Any]] = []
    workers: Workers | None = None
    node: BenchNode | None = None
    serial = 0

    def fresh_node(label: str) -> BenchNode:
        nonlocal node, serial
        if node is not None:
            node.stop()
        serial += 1
        node = BenchNode(stack, args.server, logs, settings, args.backlog).start(
            f"feeds-{serial}-{label}"
        )
        log(f"{args.server} up on port {node.port} (pid {node.pid}, {label})")
        return node

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        line = json.dumps(row)
        print("JSON " + line, flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(line + "\n")

    try:
        workers = Workers(args.procs)
        for target in targets:
            fan = scenarios & {"fixed", "saturation"}
            current = fresh_node(target)
            if fan and target == "tether":
                why = probe_tether(current.port, token)
                if why:
                    log(f"tether: fan-out skipped, /ws/stream/ not ready ({why})")
                    emit({"target": target, "scenario": "skipped", "reason": why})
                    fan = set()
            if fan:
                params = {
                    "host": "127.0.0.1",
                    "port": current.port,
                    "tokens": tokens,
                    "path": PLAIN_PATH if target == "plain" else STREAM_PATH,
                    "kind": target,
                    "subscribe": target == "tether",
                    "topic": TOPIC,
                }
                log(f"{target}: connecting {args.subscribers} subscribers …")
                opened = workers.connect(params, args.subscribers, args.sample, args.inflight)
                log(
                    f"{target}: {opened['ok']} subscribed in {opened['seconds']:.1f} s"
                    + (f", failed {opened['failed']}" if opened["failed"] else "")
                )
                for mode in ("fixed", "saturation"):
                    if mode in scenarios:
                        row = fanout(
                            target, mode, current, workers, pub_env, logs, args, opened["ok"]
                        )
                        row["connect_failed"] = opened["failed"]
                        emit(row)
                        log(
                            f"{target} {mode}: {row['deliveries_per_s']} deliveries/s, "
                            f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, loss {row['loss']}"
                        )
                workers.all(("close", None), 120)
            if "idle" in scenarios and args.idle:
                current = fresh_node(f"{target}-idle")
                row = idle(target, current, workers, tokens, args)
                emit(row)
                log(
                    f"{target} idle: {row['connections']} in {row['seconds_to_all_ready']} s, "
                    f"{row['kib_per_connection']} KiB/connection"
                )
    finally:
        if workers is not None:
            workers.stop()
        if node is not None:
            node.stop()
    print_tables(rows)
    log(f"done; logs in {logs}")


if __name__ == "__main__":
    main()
