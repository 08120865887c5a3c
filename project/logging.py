"""Keep credentials out of logs: tickets, tokens and bearer headers are redacted."""

from __future__ import annotations

import logging
import re

_PATTERNS = (
    (re.compile(r"(?i)\b(ticket|token|access_token|api_key|password)=([^&\s\"']+)"), r"\1=***"),
    (re.compile(r"(?i)\b(Bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
)


def redact(text: str) -> str:
    """Replace credential values in `text` with `***`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecretsFilter(logging.Filter):
    """Applied to every handler so no logger can leak a ticket or token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = ()
        return True
