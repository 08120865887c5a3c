"""Create the demo users once; print their passwords every time."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.management.base import BaseCommand

from accounts.models import User
from project.config import VAR_DIR

DEMO_USERS = ("alice", "bob")
PASSWORDS_FILE = VAR_DIR / "demo-passwords.txt"


def _load_passwords() -> dict[str, str]:
    if not PASSWORDS_FILE.exists():
        return {}
    pairs = (line.split(":", 1) for line in PASSWORDS_FILE.read_text().splitlines() if ":" in line)
    return {name: password for name, password in pairs}


class Command(BaseCommand):
    help = "Seed the demo (users alice and bob). Safe to run again: nothing is duplicated."

    def handle(self, *args: Any, **options: Any) -> None:
        passwords = _load_passwords()
        for name in DEMO_USERS:
            user = User.objects.filter(username=name).first()
            if user is None or name not in passwords:
                passwords[name] = f"{name}-{secrets.token_urlsafe(9)}"
                if user is None:
                    User.objects.create_user(username=name, password=passwords[name])
                else:
                    user.set_password(passwords[name])
                    user.save()
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        PASSWORDS_FILE.write_text("".join(f"{n}:{p}\n" for n, p in passwords.items()))
        PASSWORDS_FILE.chmod(0o600)
        self.stdout.write(self.style.SUCCESS("Demo users (kept in var/demo-passwords.txt):"))
        for name in DEMO_USERS:
            self.stdout.write(f"  {name:6} password: {passwords[name]}")
