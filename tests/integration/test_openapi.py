"""The offline docs page and the error catalogue page rendered by headless Chromium."""

from __future__ import annotations

import re

import pytest

from tests.support.browser import rendered_dom, run_chromium
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
    assert re.search(r'<a href="/errors">Error codes', dom)  # the catalogue is linked


@pytest.mark.integration
@pytest.mark.browser
def test_error_catalogue_page_renders_in_headless_chromium() -> None:
    app = make_versioned_app()
    with serve_app(app) as base_url:
        # A browser's own Accept header picks the page; no format parameter.
        dom = rendered_dom(f"{base_url}/errors")
    sections = re.findall(r'<section id="([^"]+)" class="error">', dom)
    assert {"NOT_FOUND-404", "VALIDATION_ERROR-422", "INTERNAL_SERVER_ERROR-500"} <= set(sections)
    assert {"METHOD_NOT_ALLOWED-405", "UNSUPPORTED_MEDIA_TYPE-415"} <= set(sections)
    not_found = dom.split('<section id="NOT_FOUND-404"', 1)[1].split("</section>", 1)[0]
    assert "resource_type" in not_found
    assert "/api/v1/networks/{network_id}" in not_found
    assert 'href="/docs#/v1/v1.get_network_v1"' in not_found
    assert "<title>GRN service — error codes</title>" in dom
