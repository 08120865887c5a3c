"""Names no other test uses: live tests share their stack's database and Redis."""

from __future__ import annotations

import uuid


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
