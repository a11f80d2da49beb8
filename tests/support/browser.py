"""Headless Chromium for the pages the library serves (/docs, /errors), offline."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import require_binary

__all__ = ["rendered_dom"]


def rendered_dom(url: str) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts, with no other host reachable.

    Fails (never skips) when Chromium is missing or exits with an error.
    """
    chromium = require_binary("chromium")
    with tempfile.TemporaryDirectory() as profile:
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
            url,
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
    return result.stdout
