"""These tests read what the outbox sends: each starts and ends with it empty."""

import pytest


@pytest.fixture(autouse=True)
def _own_outbox(fresh_outbox: None) -> None:
    return None
