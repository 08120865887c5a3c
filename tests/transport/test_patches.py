"""The server internals Tether patches or relies on are declared and checked at start
(realtime/transport/patches.py): an upgrade that reshapes one stops the node with one
line naming the package, its version and the patch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from realtime.transport import patches

ROOT = Path(__file__).resolve().parents[2]
TETHER_PACKAGES = re.compile(
    r"^(daphne|Twisted|autobahn|uvicorn|httptools|channels-redis)(?:\[[^\]]*\])?==", re.M
)


def test_every_declared_patch_fits_the_installed_packages() -> None:
    assert patches.problems() == []


def test_every_patched_package_is_pinned() -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    pinned = {name.lower() for name in TETHER_PACKAGES.findall(requirements)}
    wanted = {p.package.lower() for p in patches.ALL} | {"httptools"}
    assert wanted <= pinned, f"not pinned: {sorted(wanted - pinned)}"


def test_a_changed_signature_is_one_line_naming_package_version_and_patch(monkeypatch) -> None:
    from daphne import access

    # As if upstream had changed it (before Tether's replacement was applied).
    monkeypatch.setattr(patches, "_originals", {})
    monkeypatch.setattr(access.AccessLogGenerator, "write_entry", lambda self, line: None)
    (line,) = patches.problems((patches.DAPHNE_ACCESS_LOG,))
    assert line.startswith(f"daphne {patches.version('daphne')}: ")
    assert "'access log through logging'" in line and "takes (self, line)" in line
    assert "\n" not in line


def test_a_missing_attribute_is_named(monkeypatch) -> None:
    from channels_redis import pubsub

    monkeypatch.delattr(pubsub.RedisSingleShardConnection, "_ensure_redis")
    (line,) = patches.problems((patches.REDIS_SHARD,))
    assert line.startswith("channels-redis ") and "has no _ensure_redis" in line


def test_manage_py_check_reports_it_as_an_error(monkeypatch) -> None:
    from daphne import server

    monkeypatch.setattr(server.Server, "handle_reply", lambda self, message: None)
    with pytest.raises(SystemCheckError, match=r"tether\.E001"):
        call_command("check")


def test_replace_refuses_a_reshaped_target(monkeypatch) -> None:
    from daphne import http_protocol

    monkeypatch.setattr(http_protocol.WebRequest, "process", lambda self, extra: None)
    monkeypatch.setattr(patches, "_originals", {})
    with pytest.raises(patches.PatchDoesNotFit, match="daphne"):
        patches.replace(patches.DAPHNE_UPGRADE, lambda self: None)


def test_the_node_refuses_to_start_on_a_reshaped_package(tmp_path: Path) -> None:
    """What an operator sees: daphne's WebSocketProtocol.serverClose changed upstream."""
    code = (
        "import daphne.ws_protocol as w\n"
        "w.WebSocketProtocol.serverClose = lambda self, code, reason: None\n"
        "import project.asgi\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SECRET_KEY": "tests-only-" + "k" * 50,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "AUTO_MIGRATE": "off",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tether: daphne {patches.version('daphne')}: ")
    assert "'close with any valid code'" in lines[0]
