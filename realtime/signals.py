"""Django signals for code in the same project (docs/integration.md, "Events to your
backend"): sent after commit by the one way out, chat/events.py, for every path
that stores (socket batches and REST alike).

Receivers run in the node's process: keep them short, or hand the work to a
queue. A receiver that raises is logged and does not fail the change, which is
already committed. Each is sent only when something is connected to it.
"""

from __future__ import annotations

from django.dispatch import Signal

# sender: the Message model; event: the `message` frame's fields without `type`
# (PROTOCOL 10), the `data` of the `conversation.event` webhook.
message_event_stored = Signal()
# sender: the Membership model; conversation: its id; user: `{"id", "username"}`.
member_joined = Signal()
member_left = Signal()
# sender: the Presence model; user: `{"id", "username"}`; status: "online" | "offline";
# ts: ms, the same as the `presence` frames'.
presence_changed = Signal()
