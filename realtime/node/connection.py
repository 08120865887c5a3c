"""Per-connection state: heartbeat clock, rate bucket, violation counts, close hook.

The consumer owns the socket; this object is what the node runtime's sweeper
reads, so there is no timer per connection (docs/architecture.md, rule 4).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from realtime.node.ratelimit import TokenBucket
from realtime.node.registry import ConnectionInfo

# Repeated protocol violations close with 4400 (PROTOCOL 4). A second binary
# frame is "repeated"; bad JSON gets some slack for a client fixing itself.
BINARY_FRAMES_BEFORE_CLOSE = 2
BAD_JSON_IN_A_ROW_BEFORE_CLOSE = 10
# PROTOCOL 8: over the bucket for this long in a row closes with 4429.
FLOOD_SECONDS = 10.0
# ping/pong frames a socket may send: outside the rate limit, but not unlimited.
HEARTBEATS_PER_SECOND = 5
HEARTBEAT_BURST = 20


@dataclass(eq=False, slots=True)
class Connection:
    """One accepted, authenticated socket on this node."""

    info: ConnectionInfo
    username: str
    bucket: TokenBucket
    send_frame: Callable[[dict[str, Any]], Awaitable[None]] = field(repr=False)
    send_text: Callable[[str], Awaitable[None]] = field(repr=False)
    close: Callable[[int], Awaitable[None]] = field(repr=False)
    # Runs a control message from another node (kick, joined, left) on this socket.
    control: Callable[[dict[str, Any]], None] = field(repr=False)
    connected_at: float = field(default_factory=time.monotonic)
    last_in: float = field(default_factory=time.monotonic)
    last_out: float = field(default_factory=time.monotonic)
    last_flushed_in: float = 0.0
    binary_frames: int = 0
    bad_json_in_a_row: int = 0
    limited_since: float | None = None
    last_refused: float = 0.0
    closing: bool = False
    # ping/pong skip `bucket` (they prove liveness) but have their own, wide one.
    heartbeats: TokenBucket = field(
        default_factory=lambda: TokenBucket(
            HEARTBEATS_PER_SECOND, HEARTBEAT_BURST, time.monotonic()
        )
    )
    # When the credential the socket rests on expires (ms since the epoch; a connection
    # token's `exp`, PROTOCOL 11): the sweeper closes it with 4401 then. None: never.
    expires_at: int | None = None
    holding: bool = False  # delivery.hold: live frames wait for the resume `sync`
    # Delivery cursors: sequence key → last position delivered on this socket.
    cursors: dict[str, int] = field(default_factory=dict, repr=False)
    # What this socket was sent of each sequence, where a cursor moved without sending
    # (sequence key → delivery.SentRuns): a `sync` sends each message once per socket.
    sent_runs: dict[str, Any] = field(default_factory=dict, repr=False)
    sequences: dict[str, Any] = field(default_factory=dict, repr=False)  # delivery.SequenceState
    outbound: Any = field(default=None, repr=False)  # backpressure.Outbound, under daphne
    # Topics: topic → epoch of what this socket was sent (None while subscribing).
    epochs: dict[str, str | None] = field(default_factory=dict, repr=False)
    # How often the user's rights changed while this socket was open: a check made
    # before a change is made again after it.
    rights_changes: int = 0

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def user_id(self) -> int:
        return self.info.user_id

    def heard(self, now: float) -> None:
        """Any frame from the client proves it is alive (PROTOCOL 5)."""
        self.last_in = now

    def rate_check(self, now: float) -> tuple[int, bool]:
        """(retry_after ms or 0, whether the flood limit is reached).

        "Over the limit for 10 s in a row" means frames kept being refused with
        no refusal-free second in between: a flooder also gets frames through
        whenever a token refills, so an accepted frame alone does not end it.
        """
        retry_after = self.bucket.take(now)
        if retry_after == 0:
            if self.limited_since is not None and now - self.last_refused > 1.0:
                self.limited_since = None
            return 0, False
        if self.limited_since is None or now - self.last_refused > 1.0:
            self.limited_since = now
        self.last_refused = now
        return retry_after, now - self.limited_since >= FLOOD_SECONDS

    def binary_violation(self) -> bool:
        """Count a binary frame; True when the socket must close with 4400."""
        self.binary_frames += 1
        return self.binary_frames >= BINARY_FRAMES_BEFORE_CLOSE

    def bad_json_violation(self) -> bool:
        """Count a bad JSON frame; True when the socket must close with 4400."""
        self.bad_json_in_a_row += 1
        return self.bad_json_in_a_row >= BAD_JSON_IN_A_ROW_BEFORE_CLOSE

    def good_frame(self) -> None:
        self.bad_json_in_a_row = 0
