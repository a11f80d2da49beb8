"""Headless Chromium for the page tests: offline, with a profile of its own."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import require_binary

__all__ = ["ARTEFACTS", "run_chromium"]

#: Where browser tests leave what a person may want to look at (git-ignored).
ARTEFACTS = Path(__file__).resolve().parents[2] / "artefacts"


def run_chromium(url: str, *options: str, virtual_time_ms: int = 20000) -> str:
    """Load ``url`` in headless Chromium with ``options`` (``--dump-dom``...); its stdout.

    Every host but 127.0.0.1 fails to resolve, so a page that needs a CDN fails.
    ``virtual_time_ms`` of the page's timers run before Chromium stops.
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
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={Path(profile)}",
            f"--virtual-time-budget={virtual_time_ms}",
            *options,
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


# Kept apart from the lines above, which are shared with the console's tests.
__all__ += ["rendered_dom"]


def rendered_dom(url: str) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts, offline.

    Fails (never skips) when Chromium is missing or exits with an error.
    """
    return run_chromium(url, "--dump-dom")
