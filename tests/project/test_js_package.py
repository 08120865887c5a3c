"""The JavaScript client as the npm package `tether-client` (clients/js/).

The package directory is the one source: the pages load the same file as
/static/tether/client.js. Its TypeScript declarations are compiled with the
system's `tsc` (Debian: node-typescript) and packed with `npm pack --dry-run`;
without those tools the tests skip loudly, or fail when REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.live import ROOT
from tests.support.services import require_or_skip

PACKAGE = ROOT / "clients" / "js"
SOURCE = PACKAGE / "src" / "client.js"
DECLARATIONS = PACKAGE / "src" / "client.d.ts"


def tool(name: str, debian_package: str) -> str:
    found = shutil.which(name)
    if not found:
        require_or_skip(
            f"the JavaScript package tests need `{name}` (Debian: apt-get install {debian_package})"
        )
    return found


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def test_the_declarations_and_their_usage_compile_under_strict_tsc() -> None:
    tsc = tool("tsc", "node-typescript")
    config = json.loads((PACKAGE / "tsconfig.json").read_text())
    assert config["compilerOptions"]["strict"] is True
    assert config["compilerOptions"]["noEmit"] is True
    result = run([tsc, "-p", str(PACKAGE / "tsconfig.json")], cwd=PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_declarations_name_every_runtime_export() -> None:
    node = tool("node", "nodejs")
    # Imported by the package's own name, as an application does (exports map).
    script = 'import * as m from "tether-client"; console.log(JSON.stringify(Object.keys(m)));'
    result = run([node, "--input-type=module", "-e", script], cwd=PACKAGE)
    assert result.returncode == 0, result.stderr
    runtime = set(json.loads(result.stdout))
    declared = set(
        re.findall(
            r"^export declare (?:abstract )?(?:class|function|const|let) (\w+)",
            DECLARATIONS.read_text(),
            re.M,
        )
    )
    assert runtime == declared
    assert {"ChatClient", "StreamClient", "Connection", "exchangeToken"} <= runtime


def test_package_json_is_an_es_module_package_with_types() -> None:
    meta = json.loads((PACKAGE / "package.json").read_text())
    assert meta["name"] == "tether-client" and re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["type"] == "module"
    entry = meta["exports"]["."]
    assert list(entry) == ["types", "default"]  # "types" must come first to be seen
    assert (PACKAGE / entry["default"]).resolve() == SOURCE
    assert (PACKAGE / entry["types"]).resolve() == DECLARATIONS
    assert (PACKAGE / meta["types"]).resolve() == DECLARATIONS
    assert set(meta["files"]) == {"src/client.js", "src/client.d.ts"}


def test_npm_pack_lists_the_module_its_types_and_readme(tmp_path: Path) -> None:
    npm = tool("npm", "npm")
    env = {**os.environ, "npm_config_cache": str(tmp_path / "cache"), "npm_config_offline": "true"}
    result = run([npm, "pack", "--dry-run", "--json"], cwd=PACKAGE, env=env)
    assert result.returncode == 0, result.stderr
    # Older npm prints notices before the JSON.
    report = json.loads(result.stdout[result.stdout.index("[") :])
    files = {entry["path"] for entry in report[0]["files"]}
    assert files == {"package.json", "README.md", "src/client.js", "src/client.d.ts"}


@pytest.mark.django_db
def test_the_pages_load_the_package_source_itself(client) -> None:
    assert not (ROOT / "static" / "tether" / "client.js").exists(), "a second copy"
    response = client.get("/static/tether/client.js")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == SOURCE.read_bytes()
    for page in ("chat.js", "feeds.js", "ops.js"):
        text = (ROOT / "static" / "tether" / page).read_text()
        assert 'from "./client.js"' in text, page
