"""After a WebSocket upgrade, uvicorn's HTTP protocol and its httptools parser keep
pointing at each other (the parser holds the protocol's callbacks): about a dozen
objects per handshake that only a full collection of the garbage collector frees,
and a node runs those rarely (`realtime.node.runtime._tune_interpreter`). The
upgrade now unlinks them, so they go at once (docs/deployment.md, "uvicorn
instead of daphne": memory per idle socket).
Patched once at import of `project.asgi`; nothing happens where uvicorn is absent."""

from __future__ import annotations

from typing import Any

from realtime.transport import patches

_PATCHED = False


def patch_uvicorn_upgrade_leftovers() -> None:
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    try:
        upgrade = patches.original(patches.UVICORN_UPGRADE)
    except ImportError:  # uvicorn (or httptools) not installed: nothing to do
        return

    def upgrade_then_unlink(self: Any) -> None:
        upgrade(self)
        # The transport now belongs to the WebSocket protocol; this one only
        # returns from `data_received`, which no longer needs its parser.
        self.parser = None

    patches.replace(patches.UVICORN_UPGRADE, upgrade_then_unlink)
