"""Create the demo users once; print their passwords every time."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.models import User
from project.config import VAR_DIR

DEMO_USERS = ("alice", "bob")
PASSWORDS_FILE = VAR_DIR / "demo-passwords.txt"


def _load_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {name: password for name, password in pairs}


class Command(BaseCommand):
    help = "Seed the demo (users alice and bob). Safe to run again: nothing is duplicated."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--passwords-file",
            type=Path,
            default=PASSWORDS_FILE,
            help=f"where the demo passwords are kept (default {PASSWORDS_FILE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["passwords_file"]
        passwords = _load_passwords(path)
        for name in DEMO_USERS:
            user = User.objects.filter(username=name).first()
            if user is None or name not in passwords:
                passwords[name] = f"{name}-{secrets.token_urlsafe(9)}"
                if user is None:
                    User.objects.create_user(username=name, password=passwords[name])
                else:
                    user.set_password(passwords[name])
                    user.save()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{n}:{p}\n" for n, p in passwords.items()))
        path.chmod(0o600)
        self.stdout.write(self.style.SUCCESS(f"Demo users (passwords kept in {path}):"))
        for name in DEMO_USERS:
            self.stdout.write(f"  {name:6} password: {passwords[name]}")
        conversation = _demo_conversation()
        self.stdout.write(f"  conversation between alice and bob: {conversation}")
        feed = settings.DEMO_FEED
        if feed:
            self.stdout.write(f"  topic feed: {feed} (a price tick every second, on /feeds/)")


def _demo_conversation() -> str:
    """The direct conversation of alice and bob, with a first message once."""
    from realtime.chat import conversations, sends

    alice = User.objects.get(username="alice")
    bob = User.objects.get(username="bob")
    conversation, _ = conversations.check_create_direct(alice, [bob.id])
    if conversation.last_seq == 0:
        sends.send(alice, conversation.id, "demo-hello", "Hi Bob! This is Tether.")
    return conversation.id
