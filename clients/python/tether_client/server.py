"""The backend API (PROTOCOL 12) for the application's backend: `Server` (blocking)
and `AsyncServer` (asyncio), the same methods on both, each row behind its scope."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import httpx

from . import rest
from .refs import user_ref
from .rest import Call, segment

R = TypeVar("R")
MAX_PUBLICATIONS = 100


def _presence(body: dict[str, Any]) -> dict[int, str]:
    return {int(k): v for k, v in body["presence"].items()}


class _Rows(Generic[R]):
    """Every row described once; `_call` runs it (blocking, or as a coroutine)."""

    def _call(self, call: Call) -> R:
        raise NotImplementedError

    def request(
        self, method: str, path: str, json: Any = None, params: Mapping[str, str] | None = None
    ) -> R:
        """Any other REST call with the service token; the decoded body."""
        return self._call(Call(method.upper(), path, json, dict(params) if params else None))

    def put_user(
        self, external_id: str, *, username: str | None = None, is_active: bool | None = None
    ) -> R:
        """Create or update the user of `external_id` (scope `users`): the user.
        `is_active=False` closes their sockets with 4403 and refuses new ones."""
        body: dict[str, Any] = {}
        if username is not None:
            body["username"] = username
        if is_active is not None:
            body["is_active"] = is_active
        return self._call(Call("PUT", f"/api/server/users/{segment(external_id)}/", body))

    def create_conversation(
        self, kind: str, members: Iterable[Any], *, title: str | None = None
    ) -> R:
        """A `group` or `direct` conversation of `members` (scope `chat`); the service
        is not a member. A direct one takes exactly two and may already exist."""
        body: dict[str, Any] = {"kind": kind, "members": [user_ref(m) for m in members]}
        if title is not None:
            body["title"] = title
        return self._call(Call("POST", "/api/server/conversations/", body))

    def add_member(self, conversation: str, user: Any) -> R:
        """Add a member (scope `chat`); their sockets get `joined`."""
        path = f"/api/server/conversations/{segment(conversation)}/members/"
        return self._call(Call("POST", path, {"user": user_ref(user)}))

    def remove_member(self, conversation: str, user: int | Mapping[str, Any]) -> R:
        """Remove a member by Tether user id (scope `chat`); their sockets get `left`."""
        ref = user_ref(user)
        if not isinstance(ref, int):
            raise TypeError("remove_member takes a Tether user id (or a user with its id)")
        path = f"/api/server/conversations/{segment(conversation)}/members/{ref}/"
        return self._call(Call("DELETE", path, unwrap=lambda _: None))

    def post_message(
        self,
        conversation: str,
        id: str,
        body: str,
        sender: Any = None,
        *,
        reply_to: str | None = None,
        attachments: Iterable[str] | None = None,
    ) -> R:
        """Store a message as `sender` (a member) or, with `sender=None`, a system
        message (scope `chat`). `id` is the idempotency key (the sender's key space):
        the same `id` again answers the stored message with `duplicate: true`."""
        payload: dict[str, Any] = {
            "id": id,
            "body": body,
            "sender": None if sender is None else user_ref(sender),
        }
        if reply_to is not None:
            payload["reply_to"] = reply_to
        if attachments is not None:
            payload["attachments"] = list(attachments)
        path = f"/api/server/conversations/{segment(conversation)}/messages/"
        return self._call(Call("POST", path, payload))

    def presence(self, users: Iterable[int] = (), external_ids: Iterable[str] = ()) -> R:
        """`{tether id: "online" | "offline"}` (scope `presence`); at most 500 ids in all;
        external ids that name no user are left out."""
        params = {}
        ids = [str(int(u)) for u in users]
        ext = [str(e) for e in external_ids]
        if ids:
            params["users"] = ",".join(ids)
        if ext:
            params["external_ids"] = ",".join(ext)
        return self._call(Call("GET", "/api/server/presence/", params=params, unwrap=_presence))

    def disconnect(self, external_id: str, code: int = 4403) -> R:
        """Close every socket of the user on every node (scope `connections`) with 4403
        (default) or 4401; how many were closed."""
        path = f"/api/server/users/{segment(external_id)}/disconnect/"
        return self._call(Call("POST", path, {"code": code}, unwrap=lambda b: b["closed"]))

    def publish(self, publications: Iterable[tuple[str, Any] | Mapping[str, Any]]) -> R:
        """Publish 1 to 100 `(topic, data)` pairs (or `{topic, data}`) in order (scope
        `publish`): `[{topic, offset, epoch}, …]` in the same order."""
        items = []
        for p in publications:
            if isinstance(p, Mapping):
                items.append({"topic": p["topic"], "data": p["data"]})
            else:
                topic, data = p
                items.append({"topic": topic, "data": data})
        if not 1 <= len(items) <= MAX_PUBLICATIONS:
            raise ValueError(f"publish takes 1 to {MAX_PUBLICATIONS} publications")
        body = {"publications": items}
        return self._call(Call("POST", "/api/server/publish/", body, unwrap=lambda b: b["results"]))


class Server(_Rows[Any]):
    """The backend API over blocking HTTP. Use as a context manager or `close()`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = rest.DEFAULT_TIMEOUT,
        client: httpx.Client | None = None,
    ) -> None:
        self._client = client or httpx.Client(
            base_url=base_url.rstrip("/"), headers=rest.headers(token), timeout=timeout
        )

    def _call(self, call: Call) -> Any:
        return rest.result(call, self._client.send(rest.build(self._client, call)))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncServer(_Rows[Awaitable[Any]]):
    """The backend API over asyncio HTTP (`httpx.AsyncClient`); every method is a
    coroutine. Use `async with` or `await aclose()`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = rest.DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=rest.headers(token), timeout=timeout
        )

    async def _call(self, call: Call) -> Any:
        return rest.result(call, await self._client.send(rest.build(self._client, call)))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
