"""The offline docs page rendered by headless Chromium from a real server."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.openapi_app import make_versioned_app
from tests.support.servers import require_binary, serve_app


@pytest.mark.integration
@pytest.mark.browser
def test_docs_render_operations_in_headless_chromium() -> None:
    chromium = require_binary("chromium")
    app = make_versioned_app()
    with serve_app(app) as base_url, tempfile.TemporaryDirectory() as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            # Offline: any host but 127.0.0.1 fails to resolve, so a CDN could not load.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={Path(profile)}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            f"{base_url}/docs",
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "swagger-ui" in dom
    assert "Unable to render this definition" not in dom
    rendered_paths = set(re.findall(r'class="opblock-summary-path[^"]*" data-path="([^"]+)"', dom))
    assert {"/api/v1/networks/{network_id}", "/api/v2/networks"} <= rendered_paths, dom[-3000:]
    assert re.search(r'class="opblock opblock-post', dom)
    assert re.search(r'class="opblock opblock-get', dom)
    assert "opblock-deprecated" in dom  # v1 is shown as deprecated
