"""Focused chat tests without daphne: users with tokens, `/ws/chat/` sockets through
`WebsocketCommunicator`, conversations made by the services."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts import credentials
from accounts.models import User
from project.asgi import application
from realtime.chat import conversations
from realtime.models import Conversation
from tests.support.names import unique

WAIT = 5  # the longest a frame that should come may take (a busy machine)


@database_sync_to_async
def person() -> tuple[User, str]:
    """A user and an API token for it."""
    user = User.objects.create_user(username=unique("f"), password="pw-Not-common-123")
    return user, credentials.issue_token(user)[1]


async def group(creator: User, *others: User) -> Conversation:
    """A group conversation created through the service."""
    create = database_sync_to_async(conversations.check_create_group)
    return await create(creator, unique("t"), [u.pk for u in others])


async def chat(token: str, *, synced: bool = False) -> WebsocketCommunicator:
    """A `/ws/chat/` socket past its `welcome`; with `synced`, also past an empty
    `sync` (live delivery released)."""
    comm = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    ok, _ = await comm.connect()
    assert ok
    assert (await comm.receive_json_from(WAIT))["type"] == "welcome"
    if synced:
        await comm.send_json_to({"type": "sync", "id": "s", "positions": {}})
        while (await comm.receive_json_from(WAIT))["type"] != "synced":
            pass  # `joined` for each conversation the user already has
    return comm
