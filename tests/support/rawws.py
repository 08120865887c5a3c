"""A WebSocket client on a bare TCP socket, for tests that need one that stops reading."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    header = bytearray([0x81])
    if len(payload) < 126:
        header.append(0x80 | len(payload))
    else:
        header.append(0x80 | 126)
        header += struct.pack("!H", len(payload))
    return bytes(header) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocketClient:
    """Handshake with a bearer token, send frames, and never read unless asked."""

    def __init__(self, port: int, path: str, token: str, receive_buffer: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive window, so the server's buffers fill soon after we stop reading.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(_masked_text(json.dumps(frame).encode()))

    def close(self) -> None:
        self.sock.close()
