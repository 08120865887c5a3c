"""Issue an API token for a user; the raw token is printed once."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts import credentials
from accounts.models import SCOPES, User

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(raw: str) -> timedelta:
    match = re.fullmatch(r"([1-9]\d{0,6})([smhd])", raw.strip())
    if not match:
        raise CommandError(f"--expires-in {raw!r}: a number and s, m, h or d (e.g. 30d)")
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])


class Command(BaseCommand):
    help = "Issue an API token (Authorization: Bearer …) for USERNAME."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token")
        parser.add_argument(
            "--scope",
            default="",
            help=f"comma-separated rights on the backend API (PROTOCOL 12): {', '.join(SCOPES)}",
        )
        parser.add_argument(
            "--publish", action="store_true", help="may publish to topics (= --scope publish)"
        )
        parser.add_argument(
            "--expires-in",
            default="",
            help="how long the token lasts, e.g. 3600s, 90m, 12h, 30d (default: for ever)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        scopes = {s.strip() for s in options["scope"].split(",") if s.strip()}
        if options["publish"]:
            scopes.add("publish")
        expires_in = _duration(options["expires_in"]) if options["expires_in"] else None
        try:
            _, raw = credentials.issue_token(
                user, name=options["name"], scopes=scopes, expires_in=expires_in
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(raw)
