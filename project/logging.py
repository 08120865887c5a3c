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


class SecondaryPipelineErrorFilter(logging.Filter):
    """Drops psycopg's "error ignored terminating <Pipeline>" warning.

    psycopg logs it when a pipeline block exits on an exception and the
    pipeline's own clean-up then fails too ("pipeline aborted"). The block's
    exception is the one that matters and Tether handles it: a batch whose key
    another node stored meanwhile fails with IntegrityError and is stored send
    by send (sends.store_sends). Every such race logged a WARNING.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "psycopg"
            and isinstance(record.msg, str)
            and record.msg.startswith("error ignored terminating")
        )
