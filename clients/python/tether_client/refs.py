"""User references in backend API bodies (PROTOCOL 12): a Tether id or an external id."""

from __future__ import annotations

from typing import Any

UserRef = int | dict[str, str]


def external(external_id: str) -> dict[str, str]:
    """A reference to the application's own user id (`external_id`)."""
    return {"external_id": str(external_id)}


def user_ref(user: Any) -> UserRef:
    """Normalize a reference: an int stays a Tether id, a str is an external id, a
    user representation (`{"id": …, …}`) or `{"external_id": …}` is reduced."""
    if isinstance(user, bool):
        raise TypeError("a user reference is an int, a str or a mapping, not a bool")
    if isinstance(user, int):
        return user
    if isinstance(user, str):
        return external(user)
    if isinstance(user, dict):
        # A user representation carries both; its Tether id is the exact one.
        if isinstance(user.get("id"), int) and not isinstance(user["id"], bool):
            return user["id"]
        if user.get("external_id") is not None:
            return external(user["external_id"])
    raise TypeError(f"not a user reference: {user!r}")
