"""What the configured logging lets through (settings.LOGGING)."""

from __future__ import annotations

import logging

import pytest


def test_psycopgs_secondary_pipeline_warning_is_dropped_and_the_rest_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The clean-up warning after a pipeline block's own exception (a send racing on
    two nodes) says nothing an operator can act on; other psycopg warnings stay."""
    psycopg_log = logging.getLogger("psycopg")
    with caplog.at_level(logging.WARNING):
        psycopg_log.warning(
            "error ignored terminating %r: %s", "<psycopg.Pipeline [INERROR]>", "pipeline aborted"
        )
        psycopg_log.warning("connection lost: %s", "server closed the connection")
    assert [r.getMessage() for r in caplog.records] == [
        "connection lost: server closed the connection"
    ]
