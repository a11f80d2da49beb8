"""Tests for gennet_sync.versioning: prefixes, version headers, unknown versions."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from flask import Blueprint, Flask, make_response, url_for
from werkzeug.test import TestResponse

from gennet_sync import VersionedAPI, setup_error_handlers
from gennet_sync.error_handler import app_state
from gennet_sync.exceptions import ConflictError

DEPRECATED = date(2025, 1, 1)
SUNSET = date(2026, 1, 1)


def json_of(response: TestResponse) -> dict[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data


def make_app() -> tuple[Flask, VersionedAPI]:
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    v1 = api.version("v1", deprecated=DEPRECATED, sunset=SUNSET)
    v2 = api.version("v2")

    @v1.get("/networks/<network_id>")
    def get_network_v1(network_id: str) -> dict[str, str]:
        return {"id": network_id, "version": "1"}

    @v2.get("/networks/<network_id>")
    def get_network_v2(network_id: str) -> dict[str, str]:
        if network_id == "taken":
            raise ConflictError("busy")
        return {"id": network_id, "version": "2"}

    return app, api


def test_each_version_serves_its_own_routes_under_its_prefix() -> None:
    app, _ = make_app()
    client = app.test_client()
    assert client.get("/api/v1/networks/a").json == {"id": "a", "version": "1"}
    assert client.get("/api/v2/networks/a").json == {"id": "a", "version": "2"}
    with app.test_request_context():
        assert url_for("v2.get_network_v2", network_id="x") == "/api/v2/networks/x"


def test_current_version_has_api_version_header_and_no_deprecation() -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v2/networks/a")
    assert response.headers["API-Version"] == "v2"
    assert "Deprecation" not in response.headers
    assert "Sunset" not in response.headers
    assert "Link" not in response.headers


def test_deprecated_version_sends_rfc_deprecation_sunset_and_link() -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/networks/a")
    assert response.status_code == 200
    assert response.headers["API-Version"] == "v1"
    epoch = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    assert response.headers["Deprecation"] == f"@{epoch}"
    assert response.headers["Sunset"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert parsedate_to_datetime(response.headers["Sunset"]) == datetime(2026, 1, 1, tzinfo=UTC)
    link = response.headers["Link"]
    assert '</api>; rel="deprecation"' in link
    assert '</api/v2>; rel="successor-version"' in link


def test_error_envelopes_and_unknown_paths_inside_a_version_carry_its_headers() -> None:
    app, _ = make_app()
    client = app.test_client()
    conflict = client.get("/api/v2/networks/taken")
    assert conflict.status_code == 409
    assert json_of(conflict)["error"]["code"] == "CONFLICT"
    assert conflict.headers["API-Version"] == "v2"
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert json_of(missing)["error"]["code"] == "NOT_FOUND"
    assert missing.headers["API-Version"] == "v1"
    assert "Deprecation" in missing.headers
    wrong_method = client.post("/api/v1/networks/a")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["API-Version"] == "v1"


def test_unknown_version_is_a_404_envelope_listing_supported_versions() -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v9/networks/a")
    assert response.status_code == 404
    error = json_of(response)["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["type"] == "NotFoundError"
    assert "v9" in error["message"]
    assert error["metadata"]["supported_versions"] == ["v1", "v2"]
    assert error["metadata"]["resource_id"] == "v9"
    assert "API-Version" not in response.headers


def test_paths_outside_the_prefix_are_untouched() -> None:
    app, _ = make_app()

    @app.get("/health")
    def health() -> str:
        return "ok"

    client = app.test_client()
    assert "API-Version" not in client.get("/health").headers
    plain_404 = client.get("/apiary")
    assert plain_404.status_code == 404
    assert "supported_versions" not in json_of(plain_404)["error"]["metadata"]


def test_versions_index_lists_versions_with_dates() -> None:
    app, _ = make_app()
    body = app.test_client().get("/api").json
    assert body == {
        "versions": [
            {
                "version": "v1",
                "url": "/api/v1",
                "deprecated": "2025-01-01T00:00:00+00:00",
                "sunset": "2026-01-01T00:00:00+00:00",
            },
            {"version": "v2", "url": "/api/v2", "deprecated": None, "sunset": None},
        ]
    }


def test_sunset_earlier_than_deprecation_is_rejected() -> None:
    api = VersionedAPI()
    with pytest.raises(ValueError, match="earlier than"):
        api.version("v1", deprecated=date(2026, 1, 1), sunset=date(2025, 1, 1))
    assert api.supported_versions == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (date(2025, 3, 1), datetime(2025, 3, 1, tzinfo=UTC)),
        (datetime(2025, 3, 1, 12, 0), datetime(2025, 3, 1, 12, 0, tzinfo=UTC)),
        (
            datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        ),
        ("2025-03-01", datetime(2025, 3, 1, tzinfo=UTC)),
        ("Sat, 01 Mar 2025 00:00:00 GMT", datetime(2025, 3, 1, tzinfo=UTC)),
    ],
)
def test_dates_are_accepted_in_common_forms_and_normalised_to_utc(
    value: date | datetime | str, expected: datetime
) -> None:
    api = VersionedAPI()
    api.version("v1", deprecated=value)
    assert api.versions["v1"].deprecated == expected


@pytest.mark.parametrize("name", ["", "v 1", "v1/beta", "a.b", "x" * 40])
def test_bad_version_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="version name"):
        VersionedAPI().version(name)


def test_bad_dates_and_duplicates_are_rejected() -> None:
    api = VersionedAPI()
    with pytest.raises(ValueError, match="neither"):
        api.version("v1", sunset="next tuesday")
    api.version("v1")
    with pytest.raises(ValueError, match="already declared"):
        api.version("v1")


def test_app_factory_and_existing_blueprint_mounted_under_two_versions() -> None:
    shared = Blueprint("shared", __name__)
    calls: list[str] = []

    @shared.before_request
    def count() -> None:
        calls.append("hook")

    @shared.get("/ping")
    def ping() -> str:
        return "pong"

    api = VersionedAPI(prefix="/service/")
    api.version("v1", blueprint=shared, deprecated="2025-01-01", link="https://example.org/v1")
    api.version("v2", blueprint=shared)
    app = Flask(__name__)
    setup_error_handlers(app)
    api.init_app(app)
    assert app_state(app).features["versioning"] is api
    client = app.test_client()
    old = client.get("/service/v1/ping")
    assert old.text == "pong"
    assert old.headers["Link"].startswith('<https://example.org/v1>; rel="deprecation"')
    assert client.get("/service/v2/ping").headers["API-Version"] == "v2"
    assert calls == ["hook", "hook"]
    with app.test_request_context():
        assert url_for("v1.ping") == "/service/v1/ping"


def test_routes_added_after_registration_work_but_late_hooks_fail_loudly() -> None:
    app, api = make_app()
    v3 = api.version("v3")

    @v3.route("/late", methods=["GET", "POST"])
    def late() -> str:
        return "late"

    assert app.test_client().post("/api/v3/late").text == "late"
    with pytest.raises(AssertionError, match="blueprint=bp"):
        v3.before_request(lambda: None)


def test_second_versioned_api_on_one_app_is_refused() -> None:
    app, _ = make_app()
    with pytest.raises(RuntimeError, match="already has"):
        VersionedAPI(app)


def test_existing_link_header_is_kept() -> None:
    app, api = make_app()
    v1 = api.versions["v1"].blueprint

    @v1.get("/paged")
    def paged() -> tuple[str, int, dict[str, str]]:
        return "", 200, {"Link": '</api/v1/paged?page=2>; rel="next"'}

    link = app.test_client().get("/api/v1/paged").headers["Link"]
    assert link.startswith('</api/v1/paged?page=2>; rel="next", ')
    assert 'rel="deprecation"' in link


def make_header_routed_app() -> Flask:
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app, header_routing=True)
    v1 = api.version("v1", deprecated=DEPRECATED)
    v2 = api.version("v2")

    @v1.get("/networks")
    def networks_v1() -> dict[str, str]:
        return {"version": "1"}

    @v2.get("/networks")
    def networks_v2() -> dict[str, str]:
        return {"version": "2"}

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


def test_header_chooses_the_version_for_unprefixed_routes() -> None:
    client = make_header_routed_app().test_client()
    old = client.get("/networks", headers={"API-Version": "v1"})
    assert json_of(old) == {"version": "1"}
    assert old.headers["API-Version"] == "v1"
    assert "Deprecation" in old.headers
    assert "API-Version" in old.headers["Vary"]
    new = client.get("/networks", headers={"API-Version": "v2"})
    assert json_of(new) == {"version": "2"}
    assert new.headers["API-Version"] == "v2"
    wrong_method = client.post("/networks", headers={"API-Version": "v2"})
    assert wrong_method.status_code == 405
    assert wrong_method.headers["API-Version"] == "v2"


def test_header_routing_leaves_other_paths_and_prefixed_paths_alone() -> None:
    client = make_header_routed_app().test_client()
    health = client.get("/health", headers={"API-Version": "v1"})
    assert health.text == "ok"
    assert "API-Version" not in health.headers
    assert "Vary" not in health.headers
    prefixed = client.get("/api/v2/networks", headers={"API-Version": "v1"})
    assert json_of(prefixed) == {"version": "2"}
    no_header = client.get("/networks")
    assert no_header.status_code == 404
    assert "API-Version" in no_header.headers["Vary"]


def test_unknown_header_version_is_a_404_envelope_listing_versions() -> None:
    client = make_header_routed_app().test_client()
    response = client.get("/networks", headers={"API-Version": "v7"})
    assert response.status_code == 404
    assert json_of(response)["error"]["metadata"]["supported_versions"] == ["v1", "v2"]
    # A path served without a version still works whatever the header says.
    assert client.get("/health", headers={"API-Version": "v7"}).text == "ok"


def test_link_and_vary_sent_on_several_lines_are_all_kept() -> None:
    app = make_header_routed_app()
    v1: Blueprint = app_state(app).features["versioning"].versions["v1"].blueprint

    @v1.get("/paged")
    def paged() -> Any:
        response = make_response("")
        response.headers.add("Link", '</api/v1/paged?page=2>; rel="next"')
        response.headers.add("Link", '</api/v1/paged?page=9>; rel="last"')
        response.headers.add("Vary", "Cookie")
        response.headers.add("Vary", "Origin")
        return response

    response = app.test_client().get("/paged", headers={"API-Version": "v1"})
    [link] = response.headers.getlist("Link")
    assert link.startswith(
        '</api/v1/paged?page=2>; rel="next", </api/v1/paged?page=9>; rel="last", '
    )
    assert 'rel="deprecation"' in link
    assert response.headers.getlist("Vary") == ["Cookie, Origin, API-Version"]


def test_headers_follow_the_script_root() -> None:
    app, _ = make_app()
    client = app.test_client()
    plain = client.get("/api/v1/networks/a")
    assert plain.headers["Link"] == '</api>; rel="deprecation", </api/v2>; rel="successor-version"'
    mounted = client.get("/api/v1/networks/a", environ_overrides={"SCRIPT_NAME": "/grn"})
    assert mounted.headers["Link"] == (
        '</grn/api>; rel="deprecation", </grn/api/v2>; rel="successor-version"'
    )
    assert client.get("/api/v1/networks/a").headers["Link"] == plain.headers["Link"]


def test_header_routed_path_without_a_usable_version_says_which_versions_serve_it() -> None:
    app = make_header_routed_app()
    v1: Blueprint = app_state(app).features["versioning"].versions["v1"].blueprint

    @v1.get("/legacy")
    def legacy() -> str:
        return "old"

    client = app.test_client()
    for path, headers, versions in [
        ("/networks", {}, "v1 and v2"),
        ("/networks", {"API-Version": "  "}, "v1 and v2"),
        ("/legacy", {"API-Version": "v2"}, "v1"),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == 404
        message = json_of(response)["error"]["message"]
        assert message == (
            f"{path} is served by API version {versions}: name one in the API-Version "
            f"header, or request /api/<version>{path}"
        )
    assert client.get("/legacy", headers={"API-Version": "v1"}).text == "old"
    assert client.get("/nowhere").status_code == 404


# ---------------------------------------------------------------- edge cases found by mutation


def test_a_route_under_the_prefix_that_is_no_version_keeps_its_own_405() -> None:
    app, _ = make_app()

    @app.get("/api/status")
    def status() -> str:
        return "up"

    client = app.test_client()
    assert client.get("/api/status").text == "up"
    wrong_method = client.post("/api/status")
    assert wrong_method.status_code == 405
    assert json_of(wrong_method)["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_successor_is_the_newest_version_that_is_not_deprecated() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    blueprints = {
        "v1": api.version("v1", deprecated=DEPRECATED),
        "v2": api.version("v2"),
        "v3": api.version("v3"),
        "v4beta": api.version("v4beta", deprecated=DEPRECATED),
    }
    for name, bp in blueprints.items():
        bp.add_url_rule("/ping", f"ping_{name}", lambda: "pong")
    client = app.test_client()
    assert client.get("/api/v1/ping").headers["Link"] == (
        '</api>; rel="deprecation", </api/v3>; rel="successor-version"'
    )
    # A current version gets no Link at all, even when a newer one exists.
    assert "Link" not in client.get("/api/v2/ping").headers
    assert "Link" not in client.get("/api/v3/ping").headers
    assert api.successor_of(api.versions["v3"]) is None
    assert api.successor_of(api.versions["v2"]) is api.versions["v3"]


def test_without_the_index_the_deprecation_link_does_not_point_to_it() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app, index=False)
    api.version("v1", deprecated=DEPRECATED).add_url_rule("/ping", "ping", lambda: "pong")
    api.version("v2")
    client = app.test_client()
    assert client.get("/api/v1/ping").headers["Link"] == '</api/v2>; rel="successor-version"'
    assert client.get("/api").status_code == 404


def test_init_app_twice_with_the_same_api_is_harmless() -> None:
    app, api = make_app()
    api.init_app(app)
    response = app.test_client().get("/api/v1/networks/a")
    assert response.status_code == 200
    assert response.headers["API-Version"] == "v1"


def test_naive_datetimes_are_utc_whatever_the_local_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        api = VersionedAPI()
        api.version("v1", deprecated=datetime(2025, 3, 1, 12, 0))
        assert api.versions["v1"].deprecated == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_header_routing_covers_paths_that_merely_start_like_the_prefix() -> None:
    app = make_header_routed_app()
    v2: Blueprint = app_state(app).features["versioning"].versions["v2"].blueprint

    @v2.get("/apikeys")
    def apikeys() -> dict[str, str]:
        return {"keys": "v2"}

    response = app.test_client().get("/apikeys", headers={"API-Version": "v2"})
    assert response.status_code == 200
    assert json_of(response) == {"keys": "v2"}


def test_vary_already_naming_the_version_header_is_not_repeated() -> None:
    app = make_header_routed_app()
    v2: Blueprint = app_state(app).features["versioning"].versions["v2"].blueprint

    @v2.get("/varied")
    def varied() -> tuple[str, int, dict[str, str]]:
        return "", 200, {"Vary": "api-version"}

    response = app.test_client().get("/varied", headers={"API-Version": "v2"})
    assert response.headers.getlist("Vary") == ["api-version"]


# Version headers are remembered per URL rule when the rule's text decides the version;
# every rule shape answers as the request's path says, first request or hundredth.


def make_app_with_open_rules() -> tuple[Flask, VersionedAPI]:
    """Rules of the app itself whose converters leave the version segment open."""
    app, api = make_app()

    @app.get("/api/<version>/status")
    def status(version: str) -> dict[str, str]:
        return {"version": version}

    @app.get("/api/v<int:number>/count")
    def count(number: int) -> dict[str, int]:
        return {"number": number}

    @app.get("/files/<path:rest>")
    def files(rest: str) -> dict[str, str]:
        return {"rest": rest}

    @app.get("/<path:anything>")
    def anything(anything: str) -> dict[str, str]:
        return {"anything": anything}

    return app, api


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/api/v1/status", "v1"),
        ("/api/v2/status", "v2"),
        ("/api/v9/status", None),  # matched by the app's rule, no such version
        ("/api/v1/count", "v1"),  # the int converter inside the version segment
        ("/api/v7/count", None),
        ("/api/v2/networks/a", "v2"),
        ("/files/api/v1/x", None),
        ("/api/v1/anything/else", "v1"),  # the catch-all, under v1's prefix
        ("/elsewhere", None),
    ],
)
def test_version_headers_follow_the_path_whatever_rule_matched_it(
    path: str, version: str | None
) -> None:
    app, _ = make_app_with_open_rules()
    client = app.test_client()
    # Another path through the same rule first, then this one, twice: what a rule
    # remembered for one path must not answer for another.
    for other in ("/api/v2/status", "/api/v1/networks/a", "/x/y", path, path):
        response = client.get(other)
        assert response.status_code == 200
    assert response.headers.get("API-Version") == version
    assert ("Deprecation" in response.headers) == (version == "v1")


def test_one_rule_under_two_script_roots_keeps_each_roots_links() -> None:
    app, _ = make_app()
    client = app.test_client()
    for _ in range(2):
        for root, expected in (("", "</api>"), ("/grn", "</grn/api>"), ("", "</api>")):
            response = client.get("/api/v1/networks/a", environ_overrides={"SCRIPT_NAME": root})
            assert response.headers["Link"].startswith(f'{expected}; rel="deprecation"')
