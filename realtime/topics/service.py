"""Topics (PROTOCOL 7): names, namespaces, who may read them, and publishing.

`apublish` / `publish` are the Python API used by the REST endpoint, the
`publish` management command and any code inside the project:

    from realtime.topics import publish
    publish("prices:BTC-USD", {"bid": 101.5})  # {"topic", "offset", "epoch"}

A publication is stored first (offset, history, epoch in one step) and then
leaves through topics/events.py, once to every node over the hub; a node that misses it catches up
from history (delivery cursors).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings

from realtime.protocol import (
    Code,
    TetherError,
    bad_request,
    encode,
    now_ms,
    utf8_length_exceeds,
    valid_topic,
)
from realtime.rest.permissions import VIEW_OPERATIONS, holds
from realtime.topics import events
from realtime.topics.store import Entry, Namespace, get_store
from realtime.transport import signed

log = logging.getLogger("tether.topics")


@lru_cache(maxsize=64)
def _namespaces(config: str) -> dict[str, Namespace]:
    return {
        name: Namespace(name, spec["history_size"], spec["history_ttl"], spec["access"])
        for name, spec in json.loads(config).items()
    }


def namespaces() -> dict[str, Namespace]:
    """The configured namespaces (`TOPIC_NAMESPACES`)."""
    return _namespaces(json.dumps(settings.TOPIC_NAMESPACES, sort_keys=True))


def namespace_of(topic: Any, field: str = "topic") -> Namespace:
    """The topic's namespace; `bad_request` for a malformed name, `forbidden` for an unknown
    namespace."""
    if not isinstance(topic, str):
        raise bad_request(field, "must be a string")
    if not valid_topic(topic):
        raise bad_request(field, "must match ^[a-z0-9_-]{1,32}:[A-Za-z0-9_.@-]{1,128}$")
    ns = namespaces().get(topic.split(":", 1)[0])
    if ns is None:
        # The answer of a namespace one may not read: which namespaces exist is
        # nothing to learn by probing (PROTOCOL 3).
        raise TetherError(Code.FORBIDDEN, f"you may not read {topic}")
    return ns


# The access rule whose answer changes with the user's rights (docs/security.md): an
# open socket re-checks these subscriptions when the rights change (topics/handlers.py).
STAFF = "staff"


def may_read(user: Any, topic: str, ns: Namespace, token: Any = None) -> bool:
    """PROTOCOL 7 access rules: `open`, `own` (`user:<id>` only for that user), `staff`
    (a staff account with the `realtime.view_operations` permission);
    PROTOCOL 11: `token`, a subscription token the application's backend signed for
    this user (`sub`: its `external_id`, or its id) and this exact `topic`.

    `staff` asks the database (blocking) unless the user's permissions are cached."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if ns.access == "open":
        return True
    if ns.access == "own":
        return topic.split(":", 1)[1] == str(user.pk)
    if ns.access == "token":
        return _signed_for(user, topic, token)
    return holds(user, VIEW_OPERATIONS)


def _signed_for(user: Any, topic: str, token: Any) -> bool:
    if not isinstance(token, str) or not token:
        return False
    sub = getattr(user, "external_id", None) or str(user.pk)
    try:
        signed.verify(token, sub=sub, topic=topic)
    except signed.Refused:
        return False
    return True


def readable_namespace(user: Any, topic: Any, field: str = "topic", token: Any = None) -> Namespace:
    """The namespace of a topic `user` may subscribe to; TetherError otherwise."""
    ns = namespace_of(topic, field)
    if not may_read(user, topic, ns, token):
        # The same answer whether the topic exists or not: nothing to learn by probing.
        raise TetherError(Code.FORBIDDEN, f"you may not read {topic}")
    return ns


def publication(entry: Entry) -> dict[str, Any]:
    offset, ts, data = entry
    return {"offset": offset, "data": json.loads(data), "ts": ts}


def encode_data(data: Any) -> str:
    """The publication's data as compact JSON; `too_large` above MAX_FRAME_BYTES."""
    try:
        text = encode(data)
    except (TypeError, ValueError) as exc:
        raise bad_request("data", f"must be JSON-serializable ({exc})") from None
    if utf8_length_exceeds(text, settings.MAX_FRAME_BYTES):
        raise TetherError(
            Code.TOO_LARGE, f"data is larger than {settings.MAX_FRAME_BYTES} bytes as JSON"
        )
    return text


async def apublish(topic: str, data: Any) -> dict[str, Any]:
    """Publish `data` (any JSON value) to `topic`; returns {topic, offset, epoch}.

    Raises TetherError (`bad_request`, `forbidden` for an unknown namespace,
    `too_large`). No access check: callers decide who may publish.
    """
    ns = namespace_of(topic)
    text = encode_data(data)
    ts = now_ms()
    offset, epoch = await get_store().publish(topic, ns, text, ts)
    await events.published(topic, offset, epoch, text, ts)
    return {"topic": topic, "offset": offset, "epoch": epoch}


def publish(topic: str, data: Any) -> dict[str, Any]:
    """`apublish` for synchronous code (views, tasks, shells)."""
    return async_to_sync(apublish)(topic, data)
