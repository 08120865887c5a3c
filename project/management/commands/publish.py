"""Publish to a topic from the shell: one JSON value, or JSON lines from stdin.

    manage.py publish prices:BTC-USD '{"bid": 101.5}'
    produce-ticks | manage.py publish prices:BTC-USD -

Each publication prints `{"topic", "offset", "epoch"}` on stdout; progress goes
to stderr. With Redis (`REDIS_URL`) it publishes directly. Embedded, history
lives inside the running daphne process, so the command hands publications to
it over HTTP (`--url`), with `--token` or a short-lived publish token of the
`tether-cli` account.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from realtime.protocol import TetherError

PROGRESS_EVERY_SECONDS = 1.0
CLI_USER = "tether-cli"


class HttpPublisher:
    """Embedded mode: POST /api/topics/<topic>/publish/ on the running node (keep-alive)."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80)
        self.token = token

    def publish(self, topic: str, data: Any) -> dict[str, Any]:
        body = json.dumps({"data": data})
        try:
            self.conn.request(
                "POST",
                f"/api/topics/{quote(topic, safe=':@')}/publish/",
                body=body,
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            response = self.conn.getresponse()
            payload = json.loads(response.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise CommandError(f"could not reach the node: {exc}") from None
        if response.status != 201:
            raise TetherError(payload.get("error", "error"), payload.get("detail", str(payload)))
        return payload


def _temporary_token() -> tuple[Any, str]:
    from accounts import credentials
    from accounts.models import User

    # No password: the account exists only to carry these short-lived tokens.
    user = User.objects.filter(username=CLI_USER).first() or User.objects.create_user(CLI_USER)
    return credentials.issue_token(user, name="manage.py publish", scopes=["publish"])


def _lines(stream: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line


class Command(BaseCommand):
    help = "Publish DATA (JSON) to TOPIC, or JSON lines from stdin with DATA '-' or omitted."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("topic")
        parser.add_argument("data", nargs="?", default="-", help="a JSON value, or - for stdin")
        parser.add_argument(
            "--url",
            default="",
            help="embedded mode: the running node (default http://HOST:PORT)",
        )
        parser.add_argument(
            "--token", default="", help="embedded mode: an API token that may publish"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        topic: str = options["topic"]
        single = options["data"] != "-"
        values = iter([(0, options["data"])]) if single else _lines(sys.stdin)
        if settings.REDIS_URL:
            failed, done = self._publish_direct(topic, values, single)
        else:
            failed, done = self._publish_http(topic, values, single, options)
        if single and failed:
            raise CommandError("nothing was published")
        if not single:
            self.stderr.write(f"published {done}, failed {failed}")
            if failed:
                raise CommandError(f"{failed} line(s) were not published (see above)")

    def _run(
        self,
        topic: str,
        values: Iterator[tuple[int, str]],
        single: bool,
        publish: Callable[[str, Any], dict[str, Any]],
    ) -> tuple[int, int]:
        """Publish each value in input order; report each result, failures and progress."""
        failed = done = 0
        started = last = time.monotonic()
        for number, raw in values:
            where = "DATA" if single else f"line {number}"
            try:
                data = json.loads(raw)
            except ValueError as exc:
                self.stderr.write(f"{where}: not valid JSON ({exc})")
                failed += 1
                continue
            try:
                result = publish(topic, data)
            except TetherError as exc:
                self.stderr.write(f"{where}: {exc.code}: {exc.message}")
                failed += 1
                continue
            done += 1
            self.stdout.write(json.dumps(result))
            now = time.monotonic()
            if not single and now - last >= PROGRESS_EVERY_SECONDS:
                rate = done / max(1e-9, now - started)
                self.stderr.write(f"published {done} ({rate:.0f}/s)")
                last = now
        return failed, done

    def _publish_direct(
        self, topic: str, values: Iterator[tuple[int, str]], single: bool
    ) -> tuple[int, int]:
        from realtime.topics import apublish

        # One loop for the whole run: its Redis connections are reused.
        loop = asyncio.new_event_loop()
        try:
            return self._run(
                topic, values, single, lambda t, d: loop.run_until_complete(apublish(t, d))
            )
        finally:
            loop.close()

    def _publish_http(
        self, topic: str, values: Iterator[tuple[int, str]], single: bool, options: dict[str, Any]
    ) -> tuple[int, int]:
        config = settings.TETHER_CONFIG
        url = options["url"] or f"http://{config['HOST']}:{config['PORT']}"
        token_row, raw_token = (None, options["token"]) if options["token"] else _temporary_token()
        try:
            return self._run(topic, values, single, HttpPublisher(url, raw_token).publish)
        finally:
            if token_row is not None:
                token_row.delete()
