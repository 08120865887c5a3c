"""Topic names: one rule in realtime/protocol.py, and the feeds page's copy agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realtime.protocol import TOPIC_RE, valid_topic

FEEDS_JS = Path(__file__).resolve().parents[2] / "static" / "tether" / "feeds.js"

SAMPLES = [
    "prices:DEMO",
    "a:b",
    "user:42",
    "ops:stats",
    "n_s-1:Name.with@dots-and_under",
    "x" * 32 + ":n",
    "x" * 33 + ":n",
    "ns:" + "n" * 128,
    "ns:" + "n" * 129,
    "Prices:DEMO",  # capitals only in the name
    "prices:DE MO",
    "prices:",
    ":DEMO",
    "prices:DE:MO",
    "prices:DEMO\n",  # `$` alone would let this through
    "prices:DÉMO",
    "",
]


def _js_pattern() -> str:
    match = re.search(r"const TOPIC_RE = /\^(.*)\$/;", FEEDS_JS.read_text(encoding="utf-8"))
    assert match, "static/tether/feeds.js no longer declares TOPIC_RE as /^…$/"
    return match.group(1)


def test_the_feeds_page_checks_topics_with_the_protocols_pattern() -> None:
    assert _js_pattern() == TOPIC_RE.pattern


@pytest.mark.parametrize("name", SAMPLES)
def test_the_js_copy_and_the_server_agree_on_each_name(name: str) -> None:
    # The JS literal is anchored with ^…$ and has no flags: the same language in Python
    # when matched whole.
    js = re.compile(_js_pattern())
    assert (js.fullmatch(name) is not None) == valid_topic(name)


def test_the_rule_itself() -> None:
    accepted = [s for s in SAMPLES if valid_topic(s)]
    assert accepted == [
        "prices:DEMO",
        "a:b",
        "user:42",
        "ops:stats",
        "n_s-1:Name.with@dots-and_under",
        "x" * 32 + ":n",
        "ns:" + "n" * 128,
    ]
    assert not valid_topic(None) and not valid_topic(42) and not valid_topic(b"a:b")
