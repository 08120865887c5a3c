"""The browser tests' shared fixtures: Debian's Chromium once per module, and tabs on
the module's own `web` node (each module says which node serves its pages)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.browser import Tab, launch_chromium, tab_factory
from tests.support.live import DaphneNode


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture
def tab(browser: Any, web: DaphneNode) -> Iterator[Callable[[], Tab]]:
    yield from tab_factory(browser, web)
