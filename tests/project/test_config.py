"""Settings are declared once; bad values stop the process with one clear line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from project import config
from tests.support.live import ROOT, node_env

KEY = "k" * 50  # long enough for a production node (DEBUG off)


def test_defaults_match_the_public_contract() -> None:
    cfg = config.load({"SECRET_KEY": "x" * 50})
    expected = {
        "HEARTBEAT_INTERVAL": 25,
        "PING_TIMEOUT": 60,
        "MAX_CONNECTIONS": 10000,
        "MAX_CONNECTIONS_PER_USER": 20,
        "MAX_SUBSCRIPTIONS_PER_CLIENT": 100,
        "MAX_FRAME_BYTES": 65536,
        "MAX_BODY_CHARS": 4000,
        "RATE_LIMIT_PER_SECOND": 20,
        "RATE_LIMIT_BURST": 40,
        "REPLAY_LIMIT": 500,
        "SYNC_PAGE_CONVERSATIONS": 100,
        "SIGNUP_ENABLED": True,
        "DEBUG": False,
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
        "ALLOWED_ORIGINS": ["http://127.0.0.1:8000", "http://localhost:8000"],
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "MAX_ATTACHMENT_BYTES": 10 * 1024 * 1024,
        "ATTACHMENT_UNCLAIMED_TTL": 86400,
        "ATTACHMENT_ACCEL_REDIRECT": "",
        "ATTACHMENT_STORAGE": "django.core.files.storage.FileSystemStorage",
        "ATTACHMENT_STORAGE_OPTIONS": {},
        "QUOTA_UPLOADS": "100/hour",
    }
    for name, value in expected.items():
        assert cfg[name] == value, name
        assert cfg.sources[name] == "default"
    assert cfg.sources["SECRET_KEY"] == "environment"
    assert re.fullmatch(r".+-\d+", cfg["NODE_NAME"])
    assert cfg["MEDIA_ROOT"] == str(config.VAR_DIR / "media")


def test_environment_overrides_and_origins_follow_port() -> None:
    cfg = config.load({"PORT": "9001", "PING_TIMEOUT": "90", "DEBUG": "on", "SECRET_KEY": "k"})
    assert cfg["PING_TIMEOUT"] == 90 and cfg.sources["PING_TIMEOUT"] == "environment"
    assert cfg["DEBUG"] is True
    assert cfg["ALLOWED_ORIGINS"] == ["http://127.0.0.1:9001", "http://localhost:9001"]


@pytest.mark.parametrize(
    ("env", "name", "fragment"),
    [
        ({"PING_TIMEOUT": "abc"}, "PING_TIMEOUT", "integer"),
        ({"PING_TIMEOUT": "20"}, "PING_TIMEOUT", "greater than HEARTBEAT_INTERVAL"),
        ({"HEARTBEAT_INTERVAL": "60"}, "PING_TIMEOUT", "greater than HEARTBEAT_INTERVAL"),
        ({"DATABASE_URL": "mysql//nope"}, "DATABASE_URL", ""),
        ({"REDIS_URL": "http://x"}, "REDIS_URL", "redis://"),
        ({"REDIS_URL": "redis://host:99999"}, "REDIS_URL", "port"),
        ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS", "at least 1"),
        ({"DEBUG": "maybe"}, "DEBUG", "on/off"),
        ({"ALLOWED_ORIGINS": "*.example.com"}, "ALLOWED_ORIGINS", "origin"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "json"),
        ({"TOPIC_NAMESPACES": "{nope"}, "TOPIC_NAMESPACES", "JSON object"),
        ({"TOPIC_NAMESPACES": '{"A b": {}}'}, "TOPIC_NAMESPACES", "must match"),
        ({"TOPIC_NAMESPACES": '{"p": {"access": "all"}}'}, "TOPIC_NAMESPACES", "open, own, staff"),
        ({"TOPIC_NAMESPACES": '{"p": {"history_size": -1}}'}, "TOPIC_NAMESPACES", "history_size"),
        ({"TOPIC_NAMESPACES": '{"p": {"ttl": 5}}'}, "TOPIC_NAMESPACES", "unknown keys"),
        ({"DEMO_FEED": "no topic"}, "DEMO_FEED", "topic name"),
        ({"WEBHOOK_URL": "https://b.example.com/t"}, "WEBHOOK_SECRET", "required"),
        ({"WEBHOOK_URL": "ftp://b.example.com/", "WEBHOOK_SECRET": "s"}, "WEBHOOK_URL", "http"),
        ({"WEBHOOK_URL": "https:///t", "WEBHOOK_SECRET": "s"}, "WEBHOOK_URL", "host"),
        ({"WEBHOOK_CONCURRENCY": "0"}, "WEBHOOK_CONCURRENCY", "at least 1"),
        ({"MAX_ATTACHMENT_BYTES": "0"}, "MAX_ATTACHMENT_BYTES", "at least 1"),
        ({"ATTACHMENT_UNCLAIMED_TTL": "5"}, "ATTACHMENT_UNCLAIMED_TTL", "at least 60"),
        ({"ATTACHMENT_ACCEL_REDIRECT": "_media"}, "ATTACHMENT_ACCEL_REDIRECT", "path prefix"),
        ({"ATTACHMENT_ACCEL_REDIRECT": "/a b/"}, "ATTACHMENT_ACCEL_REDIRECT", "path prefix"),
        ({"ATTACHMENT_STORAGE": "S3 please"}, "ATTACHMENT_STORAGE", "dotted class path"),
        ({"ATTACHMENT_STORAGE_OPTIONS": "[1]"}, "ATTACHMENT_STORAGE_OPTIONS", "JSON object"),
        ({"QUOTA_UPLOADS": "lots"}, "QUOTA_UPLOADS", "rate"),
    ],
)
def test_invalid_values_name_the_variable(env: dict, name: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load({"SECRET_KEY": KEY, **env})
    assert info.value.name == name
    assert fragment in str(info.value)


def test_process_stops_with_one_line_naming_the_variable() -> None:
    for env, name in (
        ({"PING_TIMEOUT": "abc"}, "PING_TIMEOUT"),
        ({"DATABASE_URL": "postgres://"}, "DATABASE_URL"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "daphne", "project.asgi:application"],
            cwd=ROOT,
            env=node_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"tether: invalid configuration: {name}:"), lines


def test_readme_configuration_table_matches_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, "run `make config-table` and paste it into README"


def test_redacted_hides_secrets_but_shows_sources() -> None:
    cfg = config.load({"SECRET_KEY": KEY, "DATABASE_URL": "postgres://u:pw@db:5432/tether"})
    rows = {row["name"]: row for row in config.redacted(cfg)}
    assert rows["SECRET_KEY"]["value"] == "***"
    assert "pw" not in rows["DATABASE_URL"]["value"]
    assert rows["DATABASE_URL"]["value"] == "postgres://***@db:5432/tether"
    assert rows["HEARTBEAT_INTERVAL"] == {
        "name": "HEARTBEAT_INTERVAL",
        "value": 25,
        "source": "default",
        "default": "25",
        "meaning": config.BY_NAME["HEARTBEAT_INTERVAL"].meaning,
    }


def test_topic_namespaces_fill_in_defaults() -> None:
    loaded = config.load({"SECRET_KEY": KEY, "TOPIC_NAMESPACES": '{"news": {"access": "staff"}}'})
    assert loaded["TOPIC_NAMESPACES"] == {
        "news": {"history_size": 100, "history_ttl": 3600, "access": "staff"}
    }
    assert config.load({"SECRET_KEY": KEY})["TOPIC_NAMESPACES"]["user"]["access"] == "own"


@pytest.mark.parametrize("key", ["k" * 49, "CHANGE-ME-to-a-long-random-string"])
def test_a_guessable_secret_key_stops_a_production_node(key: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        config.load({"SECRET_KEY": key})
    assert refused.value.name == "SECRET_KEY"
    assert config.load({"SECRET_KEY": key, "DEBUG": "on"})["SECRET_KEY"] == key  # a dev box


def test_every_credential_in_a_url_is_redacted() -> None:
    cfg = config.load(
        {
            "SECRET_KEY": KEY,
            "DATABASE_URL": "postgres://u:p@ss@db:5432/tether?sslmode=require&password=hunter2",
            "REDIS_URL": "rediss://cache:6380/0?password=hunter3;token=t0k",
        }
    )
    rows = {row["name"]: row["value"] for row in config.redacted(cfg)}
    assert rows["DATABASE_URL"] == "postgres://***@db:5432/tether?sslmode=require&password=***"
    assert rows["REDIS_URL"] == "rediss://cache:6380/0?password=***;token=***"
