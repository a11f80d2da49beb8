"""The breaker console's page in headless Chromium, served by a real server: it
renders every breaker, its numbers are the JSON's, and it needs nothing but the
server.  A screenshot goes to ``artefacts/console.png`` (git-ignored)."""

from __future__ import annotations

import json
import urllib.request
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask

from gennet_sync import GenNet
from gennet_sync.circuit_breaker import CircuitBreaker, get_circuit_breaker
from gennet_sync.console import BreakerConsole
from tests.support.breakers import ok, trip
from tests.support.browser import ARTEFACTS, run_chromium
from tests.support.servers import serve_app

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.usefixtures("fresh_breaker_registry"),
]


class Cards(HTMLParser):
    """Per breaker card (``data-breaker``): the text of each ``data-field`` element."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, dict[str, str]] = {}
        self.attributes: dict[str, dict[str, str]] = {}
        self.counts: dict[str, str] = {}
        self._card: str | None = None
        self._field: str | None = None
        self._depth = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if "data-breaker" in found:
            self._card = found["data-breaker"]
            self.cards[self._card] = {}
            self.attributes[self._card] = found
        if self._card is not None and "data-field" in found and self._field is None:
            self._field, self._depth, self._text = found["data-field"], 0, []
            if "data-retry-at" in found:
                self.attributes[self._card]["retry-at"] = found["data-retry-at"]
        elif self._field is not None:
            self._depth += 1
        if "data-count" in found:
            self._field, self._depth, self._text = "count:" + found["data-count"], 0, []

    def handle_endtag(self, tag: str) -> None:
        if self._field is None:
            return
        if self._depth:
            self._depth -= 1
            return
        text = "".join(self._text).strip()
        if self._field.startswith("count:"):
            self.counts[self._field[6:]] = text
        elif self._card is not None:
            self.cards[self._card][self._field] = text
        self._field = None

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self._text.append(data)


def make_app() -> Flask:
    app = Flask(__name__)
    GenNet(app)
    BreakerConsole(app, auth=lambda request: True)
    grn = get_circuit_breaker("grn-store", failure_threshold=3, recovery_timeout=600)
    for _ in range(5):
        grn.call(ok)
    trip(grn)
    rates = get_circuit_breaker(
        "qualitative", failure_threshold=None, failure_rate_threshold=0.9, window_size=8,
        minimum_calls=8,
    )  # fmt: skip
    for index in range(8):
        if index % 4:
            rates.call(ok)
        else:
            rates.acquire().failure()
    get_circuit_breaker("<script>alert(1)</script>").open()  # a hostile name stays text
    get_circuit_breaker("a-healthy").call(ok)
    return app


def by_name(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(breaker for breaker in data["breakers"] if breaker["name"] == name)


def test_the_page_renders_every_breaker_with_the_jsons_numbers() -> None:
    app = make_app()
    with serve_app(app) as base_url:
        url = f"{base_url}/gennet/breakers"
        dom = run_chromium(url, "--dump-dom", virtual_time_ms=5000)
        with urllib.request.urlopen(url, timeout=10) as response:
            data = json.load(response)
        ARTEFACTS.mkdir(exist_ok=True)
        screenshot = ARTEFACTS / "console.png"
        screenshot.unlink(missing_ok=True)
        run_chromium(
            url, f"--screenshot={screenshot}", "--window-size=1280,900", virtual_time_ms=5000
        )
    assert screenshot.stat().st_size > 10_000
    assert 'data-loaded="true"' in dom, dom[-3000:]
    assert f"process {data['pid']}" in dom
    assert "<script>alert" not in dom.split("<main", 1)[1]  # shown as text, never as markup
    page = Cards()
    page.feed(dom)
    assert sorted(page.cards) == sorted(b["name"] for b in data["breakers"])
    assert page.counts == {"open": "2 open", "half_open": "0 half open", "closed": "2 closed"}
    for breaker in data["breakers"]:
        card = page.cards[breaker["name"]]
        for field in ("calls", "successes", "failures", "rejections", "consecutive_failures"):
            assert card[field] == str(breaker[field]), (breaker["name"], field)
        rate = breaker["failure_rate"]
        assert card["failure_rate"] == ("\u2013" if rate is None else f"{rate * 100:.1f}%")
        assert page.attributes[breaker["name"]]["data-state"] == breaker["state"]
    grn, grn_data = page.cards["grn-store"], by_name(data, "grn-store")
    assert grn["state"] == "open"
    assert float(page.attributes["grn-store"]["retry-at"]) == pytest.approx(
        grn_data["retry_at"], abs=0.5
    )
    # The countdown ticks in the page's (virtual) time: below the JSON's, not far below.
    shown = float(grn["countdown"].removeprefix("next trial in ").removesuffix(" s"))
    assert grn_data["retry_in"] - 60 < shown <= grn_data["retry_in"] + 1
    assert "failure threshold" in grn["transitions"]
    assert page.cards["qualitative"]["failure_rate"] == "25.0%"
    # Open breakers first, whatever their names; actions shown since the app allows them.
    assert list(page.cards).index("a-healthy") > list(page.cards).index("grn-store")
    assert dom.count('data-action="force_open"') == len(data["breakers"])
    assert page.cards["<script>alert(1)</script>"]["state"] == "forced open"
    for card in page.cards.values():  # no shared storage: an action reaches this worker only
        assert f"act on process {data['pid']} only" in card["action-scope"]


def test_the_page_says_when_it_cannot_refresh() -> None:
    def broken() -> list[CircuitBreaker]:
        raise RuntimeError("registry unreachable")

    app = Flask(__name__)
    GenNet(app)
    BreakerConsole(app, breakers=broken)
    with serve_app(app) as base_url:
        dom = run_chromium(f"{base_url}/gennet/breakers", "--dump-dom", virtual_time_ms=3000)
    assert "Cannot refresh: 500 INTERNAL_SERVER_ERROR" in dom, dom[-2000:]
    assert 'data-loaded="true"' not in dom
