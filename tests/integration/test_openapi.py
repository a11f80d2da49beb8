"""The offline docs page rendered by headless Chromium from a real server."""

from __future__ import annotations

import re

import pytest

from tests.support.browser import run_chromium
from tests.support.openapi_app import make_versioned_app
from tests.support.servers import serve_app


@pytest.mark.integration
@pytest.mark.browser
def test_docs_render_operations_in_headless_chromium() -> None:
    app = make_versioned_app()
    with serve_app(app) as base_url:
        dom = run_chromium(f"{base_url}/docs", "--dump-dom")
    assert "swagger-ui" in dom
    assert "Unable to render this definition" not in dom
    rendered_paths = set(re.findall(r'class="opblock-summary-path[^"]*" data-path="([^"]+)"', dom))
    assert {"/api/v1/networks/{network_id}", "/api/v2/networks"} <= rendered_paths, dom[-3000:]
    assert re.search(r'class="opblock opblock-post', dom)
    assert re.search(r'class="opblock opblock-get', dom)
    assert "opblock-deprecated" in dom  # v1 is shown as deprecated
