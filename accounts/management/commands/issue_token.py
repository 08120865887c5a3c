"""Issue an API token for a user; the raw token is printed once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts import credentials
from accounts.models import SCOPES, User


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

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        scopes = {s.strip() for s in options["scope"].split(",") if s.strip()}
        if options["publish"]:
            scopes.add("publish")
        try:
            _, raw = credentials.issue_token(user, name=options["name"], scopes=scopes)
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(raw)
