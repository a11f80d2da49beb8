"""gennet_sync.error_catalogue and its OpenAPI side: every code documented, per operation.

The document is checked with openapi-spec-validator, each code's example against
the code's own schema with jsonschema, and the catalogue (``/errors``) for the
library's classes, an app's own subclasses and what a group of views declares.
"""

from __future__ import annotations

import gc
import json
import re
from typing import Any, ClassVar

import pytest
from flask import Blueprint, Flask, request
from jsonschema import Draft202012Validator
from marshmallow import Schema, fields
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.exceptions import BadGateway
from werkzeug.middleware.proxy_fix import ProxyFix

from gennet_sync import (
    Compression,
    ConflictError,
    GenNetException,
    NotFoundError,
    OpenAPI,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
    VersionedAPI,
    doc,
    setup_error_handlers,
)
from gennet_sync.error_catalogue import ErrorEntry, error_entries, field_schema, merge_entries
from gennet_sync.exceptions import MetadataField
from gennet_sync.openapi import declare_errors, is_library_endpoint
from tests.support.openapi_app import json_of


class NetworkLockedError(ConflictError):
    """A network is being edited by someone else."""

    code = "NETWORK_LOCKED"
    metadata_fields: ClassVar[dict[str, MetadataField]] = {
        "holder": MetadataField(str, "Who holds the lock", required=True, example="alice"),
        "until": MetadataField((int, float), "When the lock ends (Unix time)", example=1.5e9),
    }


class QuotaExceededError(GenNetException):
    status_code = 429
    code = "QUOTA_EXCEEDED"
    description = "The account used its monthly quota"
    metadata_fields: ClassVar[dict[str, MetadataField]] = {
        "quota": MetadataField(int, "Requests a month", True, 1000),
    }


class NeverDeclaredError(GenNetException):
    """Defined by the app, raised by no documented view."""

    status_code = 418
    code = "TEAPOT"


class RedirectingBase(GenNetException):
    """An app's base class that is no error of its own: left out of the catalogue."""

    status_code = 303


class DatabaseBusyError(ServiceUnavailableError):
    code = "DATABASE_BUSY"
    metadata_fields: ClassVar[dict[str, MetadataField]] = {
        "database": MetadataField(str, "Which database", example="grn"),
    }


class Body(Schema):
    name = fields.String(required=True)


def make_app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024
    setup_error_handlers(app)
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    reports = Blueprint("reports", __name__, url_prefix="/reports")
    declare_errors(admin, UnauthorizedError)
    declare_errors(reports, QuotaExceededError)

    @app.put("/networks/<network_id>")
    @doc(body=Body, errors=[NetworkLockedError, ConflictError, NotFoundError])
    def edit(network_id: str) -> str:
        Body().load(request.get_json())
        if network_id == "locked":
            raise NetworkLockedError("Locked", metadata={"holder": "alice"})
        if network_id == "taken":
            raise ConflictError("Taken")
        raise NotFoundError("Network", network_id)

    @app.post("/verify")
    @doc(calls=["qualitative"], errors=[BadGateway, DatabaseBusyError])
    def verify() -> str:
        raise DatabaseBusyError("busy", metadata={"database": "grn"})

    @app.get("/plain")
    def plain() -> str:
        return "ok"

    @reports.get("/daily")
    def daily() -> str:
        return ""

    @admin.get("/users")
    def users() -> str:
        return ""

    admin.register_blueprint(reports)
    app.register_blueprint(admin)
    OpenAPI(app, title="Catalogue <test>")
    return app


def document_of(app: Flask) -> dict[str, Any]:
    document = json_of(app.test_client().get("/openapi.json"))
    validate(document)
    return document


def codes(document: dict[str, Any], path: str, method: str) -> dict[int, list[str]]:
    responses = document["paths"][path][method]["responses"]
    return {int(s): r["x-error-codes"] for s, r in responses.items() if int(s) >= 400}


def code_validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator for one component schema, its $refs resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry)


# ------------------------------------------------------------------ the document


def test_each_operation_lists_its_codes_per_status() -> None:
    document = document_of(make_app())
    edit = codes(document, "/networks/{network_id}", "put")
    assert edit == {
        400: ["BAD_REQUEST"],
        404: ["NOT_FOUND"],
        409: ["NETWORK_LOCKED", "CONFLICT"],
        413: ["REQUEST_ENTITY_TOO_LARGE"],  # MAX_CONTENT_LENGTH is set
        415: ["UNSUPPORTED_MEDIA_TYPE"],
        422: ["VALIDATION_ERROR"],
        500: ["INTERNAL_SERVER_ERROR"],
    }
    verify = codes(document, "/verify", "post")
    assert verify[502] == ["BAD_GATEWAY"]
    assert verify[503] == ["DATABASE_BUSY", "SERVICE_UNAVAILABLE"]
    assert verify[504] == ["GATEWAY_TIMEOUT"]
    assert codes(document, "/plain", "get") == {500: ["INTERNAL_SERVER_ERROR"]}
    operation = document["paths"]["/verify"]["post"]
    assert "Calls `qualitative`." in operation["description"]
    for status in ("503", "504"):
        headers = operation["responses"][status]["headers"]
        assert headers["Retry-After"] == {"$ref": "#/components/headers/Retry-After"}
    assert "headers" not in document["paths"]["/plain"]["get"]["responses"]["500"]


def test_a_status_with_two_codes_has_one_of_their_schemas_and_an_example_each() -> None:
    document = document_of(make_app())
    conflict = document["paths"]["/networks/{network_id}"]["put"]["responses"]["409"]
    content = conflict["content"]["application/json"]
    assert content["schema"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/Error.NETWORK_LOCKED"},
            {"$ref": "#/components/schemas/Error.CONFLICT"},
        ]
    }
    assert set(content["examples"]) == {"NETWORK_LOCKED", "CONFLICT"}
    assert "`NETWORK_LOCKED`: A network is being edited by someone else" in conflict["description"]
    locked = document["components"]["schemas"]["Error.NETWORK_LOCKED"]
    metadata = locked["properties"]["error"]["properties"]["metadata"]
    assert metadata["required"] == ["holder"]
    assert metadata["properties"]["holder"]["type"] == "string"
    assert metadata["properties"]["until"]["type"] == ["integer", "number"]
    example = document["components"]["examples"]["Error.NETWORK_LOCKED"]["value"]
    assert example["error"]["metadata"] == {"holder": "alice", "until": 1.5e9}


def test_every_example_and_every_real_answer_matches_its_codes_schema() -> None:
    app = make_app()
    document = document_of(app)
    for name, example in document["components"]["examples"].items():
        validator = code_validator(document, name)
        errors = list(validator.iter_errors(example["value"]))
        assert not errors, (name, errors)
        other = "Error.CONFLICT" if name != "Error.CONFLICT" else "Error.NOT_FOUND"
        assert not code_validator(document, other).is_valid(example["value"]), name
    client = app.test_client()
    answers = {
        "Error.NETWORK_LOCKED": client.put("/networks/locked", json={"name": "n"}),
        "Error.CONFLICT": client.put("/networks/taken", json={"name": "n"}),
        "Error.NOT_FOUND": client.put("/networks/abc", json={"name": "n"}),
        "Error.DATABASE_BUSY": client.post("/verify"),
        "Error.BAD_REQUEST": client.put("/networks/a", data="{", content_type="application/json"),
        "Error.UNSUPPORTED_MEDIA_TYPE": client.put("/networks/a", data="x"),
        "Error.REQUEST_ENTITY_TOO_LARGE": client.put("/networks/a", json={"name": "n" * 2000}),
    }
    for name, response in answers.items():
        envelope = json_of(response)
        assert code_validator(document, name).is_valid(envelope), (name, envelope)


def test_errors_declared_on_an_app_a_blueprint_or_a_version_reach_their_operations() -> None:
    document = document_of(make_app())
    assert codes(document, "/admin/users", "get")[401] == ["UNAUTHORIZED"]
    daily = codes(document, "/admin/reports/daily", "get")  # nested: its parent's too
    assert daily[401] == ["UNAUTHORIZED"]
    assert daily[429] == ["QUOTA_EXCEEDED"]
    assert 401 not in codes(document, "/plain", "get")

    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    v1 = api.version("v1")
    v2 = api.version("v2")
    v1.add_url_rule("/ping", "ping", lambda: "")
    v2.add_url_rule("/ping", "ping", lambda: "")
    declare_errors(v2, QuotaExceededError)
    declare_errors(app, 403)
    OpenAPI(app)
    whole = document_of(app)
    assert 429 not in codes(whole, "/api/v1/ping", "get")
    assert codes(whole, "/api/v2/ping", "get")[429] == ["QUOTA_EXCEEDED"]
    assert codes(whole, "/api/v1/ping", "get")[403] == ["FORBIDDEN"]
    only_v2 = json_of(app.test_client().get("/openapi.json?version=v2"))
    validate(only_v2)
    assert "Error.QUOTA_EXCEEDED" in only_v2["components"]["schemas"]
    only_v1 = json_of(app.test_client().get("/openapi.json?version=v1"))
    assert "Error.QUOTA_EXCEEDED" not in only_v1["components"]["schemas"]


def test_a_code_used_at_two_statuses_gets_a_component_for_each() -> None:
    class GoneAsNotFound(GenNetException):
        status_code = 410
        code = "NOT_FOUND"

    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/a/<x>")
    @doc(errors=[GoneAsNotFound])
    def a(x: str) -> str:
        return x

    OpenAPI(app)
    document = document_of(app)
    schemas = document["components"]["schemas"]
    assert {"Error.NOT_FOUND.404", "Error.NOT_FOUND.410"} <= set(schemas)
    assert codes(document, "/a/{x}", "get")[410] == ["NOT_FOUND"]


def test_doc_and_declare_errors_refuse_what_is_no_error() -> None:
    with pytest.raises(ValueError, match="no standard response"):
        doc(errors=[418])
    with pytest.raises(TypeError, match="not an error class"):
        doc(errors=[ValueError])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not an error class"):
        declare_errors(Flask(__name__), True)

    class NotAnError(GenNetException):
        status_code = 302

    with pytest.raises(ValueError, match="not an error"):
        doc(errors=[NotAnError])
    assert error_entries(BadGateway)[0].key == (502, "BAD_GATEWAY")


def test_metadata_types_become_json_schema() -> None:
    def schema_of(kind: Any) -> Any:
        return field_schema(MetadataField(kind)).get("type")

    assert schema_of(bool) == "boolean"  # not "integer": a bool is an int
    assert schema_of(int) == "integer"
    assert schema_of((str, type(None))) == ["string", "null"]
    assert schema_of(dict) == "object"
    assert schema_of(list) == "array"
    assert schema_of(object) is None  # any JSON value
    assert schema_of((int, object)) is None


def test_subclasses_inherit_their_bases_metadata_and_merged_sources_keep_what_all_require() -> None:
    (busy,) = error_entries(DatabaseBusyError)
    assert list(busy.metadata) == ["retry_after", "service", "database"]
    assert busy.retry_after
    assert busy.description == ServiceUnavailableError.default_message  # no docstring, no own
    (locked,) = error_entries(NetworkLockedError)
    assert locked.description == "A network is being edited by someone else."
    plain = ErrorEntry(409, "NETWORK_LOCKED", "x", ("Other",), {}, {})
    (merged,) = merge_entries([locked, plain])
    assert merged.types == ("NetworkLockedError", "Other")
    assert not merged.metadata["holder"].required  # one source does not carry it
    assert merged.description == locked.description


# ------------------------------------------------------------------ the catalogue


def test_catalogue_lists_every_code_with_its_operations() -> None:
    app = make_app()
    response = app.test_client().get("/errors")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert "Accept" in response.headers["Vary"]
    catalogue = json_of(response)
    assert catalogue["title"] == "Catalogue <test>"
    by_key = {(e["status"], e["code"]): e for e in catalogue["errors"]}
    assert list(by_key) == sorted(by_key)  # by status, then code
    locked = by_key[(409, "NETWORK_LOCKED")]
    assert locked["types"] == ["NetworkLockedError"]
    assert locked["metadata"]["holder"] == {
        "schema": {"type": "string", "description": "Who holds the lock"},
        "required": True,
        "description": "Who holds the lock",
    }
    assert locked["operations"] == [
        {"method": "PUT", "path": "/networks/{network_id}", "operationId": "edit"}
    ]
    quota = by_key[(429, "QUOTA_EXCEEDED")]
    assert quota["description"] == "The account used its monthly quota"
    assert {op["path"] for op in quota["operations"]} == {"/admin/reports/daily"}
    # What any request may get, whatever the operation.
    assert by_key[(405, "METHOD_NOT_ALLOWED")]["any_request"] is True
    assert by_key[(404, "NOT_FOUND")]["any_request"] is True
    crash = by_key[(500, "INTERNAL_SERVER_ERROR")]
    assert crash["any_request"] is True
    assert "traceback" in crash["metadata"]
    assert len(crash["operations"]) == 5
    # A subclass defined in the app's package joins without being declared.
    assert not [entry for entry in catalogue["errors"] if entry["status"] < 400]
    teapot = by_key[(418, "TEAPOT")]
    assert teapot["operations"] == []
    assert teapot["description"] == "Defined by the app, raised by no documented view."
    busy = by_key[(503, "DATABASE_BUSY")]
    assert set(busy["metadata"]) == {"retry_after", "service", "database"}
    assert busy["retry_after"] is True
    breaker = by_key[(503, "SERVICE_UNAVAILABLE")]
    assert "CircuitBreakerError" in breaker["types"]
    assert "state" in breaker["metadata"]


@pytest.mark.parametrize(
    ("accept", "query", "mimetype"),
    [
        (None, "", "application/json"),
        ("*/*", "", "application/json"),
        ("application/json", "", "application/json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "", "text/html"),
        ("text/html", "?format=json", "application/json"),
        ("application/json", "?format=html", "text/html"),
    ],
)
def test_catalogue_negotiates_json_or_html(accept: str | None, query: str, mimetype: str) -> None:
    headers = {"Accept": accept} if accept else {}
    response = make_app().test_client().get(f"/errors{query}", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == mimetype


def test_catalogue_refuses_an_unknown_format_with_the_envelope() -> None:
    response = make_app().test_client().get("/errors?format=xml")
    assert response.status_code == 422
    assert json_of(response)["error"]["metadata"]["field"] == "format"


def test_catalogue_page_is_self_contained_and_escaped() -> None:
    class HostileError(GenNetException):
        """<script>alert(1)</script>"""

        status_code = 400
        code = "BAD_<b>"

    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/x")
    @doc(errors=[HostileError])
    def x() -> str:
        return ""

    OpenAPI(app, title="</title><script>alert(2)</script>")
    page = app.test_client().get("/errors?format=html", environ_overrides={"SCRIPT_NAME": "/svc"})
    text = page.text
    assert "<script" not in text
    assert "http://" not in text
    assert "https://" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "BAD_&lt;b&gt;" in text
    assert 'href="/svc/docs"' in text
    assert 'href="/svc/errors?format=json"' in text
    assert 'href="/svc/docs#/default/x"' in text
    assert re.search(r'<section id="BAD_&lt;b&gt;-400"', text)
    assert "Declared by no operation" not in text.split('id="BAD_')[1].split("</section>")[0]


def test_docs_page_links_to_the_catalogue() -> None:
    app = make_app()
    page = app.test_client().get("/docs", environ_overrides={"SCRIPT_NAME": "/svc"}).text
    assert '<a href="/svc/errors">' in page
    quiet = Flask(__name__)
    OpenAPI(quiet, errors_url=None)
    assert "/errors" not in quiet.test_client().get("/docs").text
    assert quiet.test_client().get("/errors").status_code == 404


def test_library_endpoints_stay_out_of_the_document_and_the_catalogue() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    app.add_url_rule("/metrics", "gennet_metrics", lambda: "")
    ops = Blueprint("gennet", __name__, url_prefix="/gennet")
    ops.add_url_rule("/breakers", "breakers", lambda: "")
    app.register_blueprint(ops)
    app.add_url_rule("/networks", "networks", lambda: "")
    VersionedAPI(app).version("v1").add_url_rule("/ping", "ping", lambda: "")
    OpenAPI(app)
    document = document_of(app)
    assert set(document["paths"]) == {"/networks", "/api", "/api/v1/ping"}
    catalogue = json_of(app.test_client().get("/errors"))
    paths = {op["path"] for entry in catalogue["errors"] for op in entry["operations"]}
    assert paths == {"/networks", "/api", "/api/v1/ping"}
    assert is_library_endpoint("gennet_health_live")
    assert is_library_endpoint("gennet.metrics")
    assert not is_library_endpoint("gennetics.view")
    assert not is_library_endpoint("gennet_api_versions")  # the versions index is API
    # Unknown versions get their own entry.
    unknown = [e for e in catalogue["errors"] if "supported_versions" in e["metadata"]]
    assert unknown
    assert unknown[0]["code"] == "NOT_FOUND"


def test_nothing_is_built_on_the_request_path() -> None:
    gc.collect()  # classes earlier tests made, dying mid-test, would change the catalogue
    app = make_app()
    client = app.test_client()
    state = app.extensions["gennet_sync"].features["openapi"]
    for _ in range(3):
        client.put("/networks/abc", json={"name": "n"})
        client.get("/plain")
    assert state["cache"] == {}  # neither the document nor the catalogue
    extension = state["extension"]
    first = extension.catalogue(app)
    client.get("/errors")
    assert extension.catalogue(app) is first  # built once
    html_first = client.get("/errors?format=html").text
    assert client.get("/errors?format=html").text == html_first
    body = json.dumps(json_of(client.get("/errors")))
    assert "NETWORK_LOCKED" in body


def test_compressed_catalogue_keeps_vary_on_both() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    Compression(app, min_size=10)
    OpenAPI(app)
    response = app.test_client().get("/errors", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    vary = {v.strip() for v in response.headers["Vary"].split(",")}
    assert {"Accept", "Accept-Encoding"} <= vary


def test_validation_error_class_and_marshmallow_share_the_422() -> None:
    (declared, schema) = error_entries(422)
    assert declared.types == ("ValidationError",)
    assert "field" in declared.metadata
    assert "fields" in schema.metadata
    (merged,) = merge_entries([*error_entries(ValidationError), schema])
    assert set(merged.metadata) == {"field", "errors", "fields", "fields_omitted"}


@pytest.mark.parametrize("before", [True, False])
def test_an_apps_own_route_at_errors_keeps_answering(
    before: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    if before:
        app.add_url_rule("/errors", "errors", lambda: "the app's own")
        OpenAPI(app)
    else:  # OpenAPI set up first: its rule comes first in the URL map
        OpenAPI(app)
        app.add_url_rule("/errors", "errors", lambda: "the app's own")
    client = app.test_client()
    assert client.get("/errors").text == "the app's own"
    assert client.get("/errors", headers={"Accept": "text/html"}).text == "the app's own"
    assert '<a href="/errors">' not in client.get("/docs").text
    assert "/errors" in document_of(app)["paths"]  # documented as the app's operation
    if not before:
        assert "errors_url" in caplog.text


def test_an_apps_own_errors_route_runs_its_blueprints_hooks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A guarded /errors added after OpenAPI: Flask routes to it as to any view,
    # so the blueprint's before_request still refuses a request without a token.
    app = Flask(__name__)
    setup_error_handlers(app)
    OpenAPI(app)
    admin = Blueprint("admin", __name__)

    @admin.before_request
    def need_token() -> None:
        if request.headers.get("X-Admin") != "secret":
            raise UnauthorizedError()

    @admin.get("/errors")
    def error_log() -> dict[str, Any]:
        return {"secret": ["user 42 failed login"]}

    app.register_blueprint(admin)
    client = app.test_client()
    refused = client.get("/errors")
    assert refused.status_code == 401
    assert json_of(refused)["error"]["code"] == "UNAUTHORIZED"
    assert client.get("/errors", headers={"X-Admin": "secret"}).get_json() == {
        "secret": ["user 42 failed login"]
    }
    assert client.head("/errors").status_code == 401
    assert caplog.text.count("errors_url=") == 1  # warned once


def test_an_apps_post_only_errors_route_leaves_get_to_the_catalogue() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    OpenAPI(app)
    app.add_url_rule("/errors", "report", lambda: "reported", methods=["POST"])
    client = app.test_client()
    assert client.post("/errors").text == "reported"
    assert "errors" in json_of(client.get("/errors"))


def test_the_catalogue_page_is_cached_once_whatever_the_mount_point() -> None:
    # Behind ProxyFix(x_prefix=1) the root is a request header: each client-chosen
    # prefix must not add a page to the cache.
    app = make_app()
    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)  # type: ignore[method-assign]
    client = app.test_client()
    state = app.extensions["gennet_sync"].features["openapi"]
    client.get("/errors?format=html")
    entries = len(state["cache"])
    for number in range(200):
        prefix = f"/p{number}"
        page = client.get("/errors?format=html", headers={"X-Forwarded-Prefix": prefix}).text
        assert f'href="{prefix}/errors?format=json"' in page
        assert f'href="{prefix}/docs#/' in page
    assert len(state["cache"]) == entries
    hostile = client.get("/errors?format=html", headers={"X-Forwarded-Prefix": "/x<script>&'"}).text
    assert "<script>" not in hostile
    assert 'href="/x&lt;script&gt;&amp;&#x27;/errors?format=json"' in hostile
    assert "gennet-script-root-" not in hostile
    assert 'href="/errors?format=json"' in client.get("/errors?format=html").text


def test_a_class_defined_after_the_first_request_joins_the_catalogue() -> None:
    app = make_app()
    client = app.test_client()
    assert "LATE_ARRIVAL" not in client.get("/errors").text
    assert "LATE_ARRIVAL" not in client.get("/errors?format=html").text

    class LateArrivalError(ConflictError):  # as a module imported later would define it
        """A module imported after the first request defines it."""

        code = "LATE_ARRIVAL"

    try:
        assert "LATE_ARRIVAL" in client.get("/errors").text
        assert "LATE_ARRIVAL" in client.get("/errors?format=html").text
    finally:
        del LateArrivalError
        gc.collect()  # out of GenNetException's subclasses for the next tests
    assert "LATE_ARRIVAL" not in client.get("/errors").text


def test_a_class_without_description_or_docstring_reads_as_its_status() -> None:
    class ArchivedError(GenNetException):
        status_code = 410
        code = "ARCHIVED"

    class StaleLockError(ConflictError):
        code = "STALE_LOCK"

    try:
        # GenNetException's "Internal server error" would misdescribe a 410.
        assert error_entries(ArchivedError)[0].description == "Gone"
        # A base of the same status still lends its message.
        assert error_entries(StaleLockError)[0].description == ConflictError.default_message
    finally:
        del ArchivedError, StaleLockError
        gc.collect()
