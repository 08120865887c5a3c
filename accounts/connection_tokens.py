"""Users from the application's backend (PROTOCOL 11): a verified connection token's
`sub` is a Tether user's `external_id` (realtime/transport/signed.py verifies)."""

from __future__ import annotations

import hashlib

from django.db import IntegrityError, transaction

from accounts import usernames
from accounts.models import User
from realtime.transport.signed import Refused


def user_for(sub: str, name: str | None = None) -> User:
    """The Tether user of the application's user `sub`, created at first sight (active,
    no usable password), named `name` when that name is free."""
    user = User.objects.filter(external_id=sub).first()
    if user is not None:
        return user
    for username in _usernames(sub, name):
        try:
            with transaction.atomic():
                user = User(username=username, external_id=sub)
                user.set_unusable_password()
                user.save()
                return user
        except IntegrityError:
            # The same sub created meanwhile (another node), or the name is taken.
            found = User.objects.filter(external_id=sub).first()
            if found is not None:
                return found
    raise Refused("no free user name for this `sub`")


def _usernames(sub: str, name: str | None) -> list[str]:
    """`name` if a new user may take it (accounts/usernames.py), then names derived
    from `sub`."""
    derived = "ext-" + hashlib.sha256(sub.encode()).hexdigest()[:12]
    names = [derived, derived + "-" + hashlib.sha256(b"2" + sub.encode()).hexdigest()[:6]]
    if name and not name.startswith("ext-"):
        try:
            names.insert(0, usernames.check(name))
        except usernames.Refused:
            pass
    return names


# The registry's reference for sockets resting on connection tokens: "jwt:<user id>".
JWT_REF = "jwt:"


def jwt_ref(user_id: int) -> str:
    return f"{JWT_REF}{user_id}"
