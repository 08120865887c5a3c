"""Issue an API token for a user; the raw token is printed once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts import credentials
from accounts.models import User


class Command(BaseCommand):
    help = "Issue an API token (Authorization: Bearer …) for USERNAME."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token")
        parser.add_argument(
            "--publish", action="store_true", help="may publish to topics over REST"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        _, raw = credentials.issue_token(user, name=options["name"], can_publish=options["publish"])
        self.stdout.write(raw)
