"""gennet_sync.openapi: the 3.1 document, standard errors, versions, offline docs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask
from openapi_spec_validator import validate

from gennet_sync import NotFoundError, OpenAPI, VersionedAPI, doc, setup_error_handlers
from gennet_sync.error_handler import app_state
from gennet_sync.openapi import _swagger_ui_dir
from tests.support.openapi_app import NetworkSchema, PageSchema, json_of, make_versioned_app

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def make_app() -> Flask:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/networks/<network_id>")
    @doc(response=NetworkSchema, errors=[409])
    def get_network(network_id: str) -> dict[str, str]:
        """Fetch one network.

        Networks are identified by an opaque string.
        """
        raise NotFoundError("Network", network_id)

    @app.post("/networks")
    @doc(
        body=NetworkSchema, response=NetworkSchema, status=201, rate_limited=True, tags=["networks"]
    )
    def create_network() -> tuple[dict[str, str], int]:
        return {}, 201

    @app.get("/networks")
    @doc(response=NetworkSchema, many=True, query=PageSchema)
    def list_networks() -> list[str]:
        return []

    @app.get("/internal")
    @doc(hidden=True)
    def internal() -> str:
        return ""

    @app.get("/health")
    def health() -> str:
        return "ok"

    OpenAPI(app, title="GRN service", version="2.1.0")
    return app


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def test_document_is_valid_openapi_3_1() -> None:
    document = json_of(make_app().test_client().get("/openapi.json"))
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "GRN service", "version": "2.1.0"}
    validate(json_of(make_versioned_app().test_client().get("/openapi.json")))


def test_error_envelope_is_a_component_matching_real_errors() -> None:
    app = make_app()
    client = app.test_client()
    document = json_of(client.get("/openapi.json"))
    schemas = document["components"]["schemas"]
    assert schemas["ErrorEnvelope"]["required"] == ["error"]
    assert schemas["ErrorEnvelope"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert sorted(schemas["ErrorBody"]["required"]) == ["code", "message", "metadata", "type"]
    real = json_of(client.get("/networks/abc123"))
    not_found = document["components"]["responses"]["NotFound"]["content"]["application/json"]
    assert not_found["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert not_found["example"] == real
    for response in document["components"]["responses"].values():
        example = response["content"]["application/json"]["example"]
        assert set(example) == {"error"}
        assert set(example["error"]) == {"code", "type", "message", "metadata"}


def codes_of(operation: dict[str, Any]) -> dict[str, list[str]]:
    """Each error status of an operation with the codes it documents."""
    return {
        status: response["x-error-codes"]
        for status, response in operation["responses"].items()
        if int(status) >= 400
    }


def test_standard_errors_are_added_where_they_apply() -> None:
    document = json_of(make_app().test_client().get("/openapi.json"))
    seen = 0
    for path, method, operation in operations(document):
        codes = codes_of(operation)
        assert codes["500"] == ["INTERNAL_SERVER_ERROR"], (path, method)
        assert "503" not in codes, (path, method)  # no view here calls a service
        assert ("404" in codes) == ("{" in path), (path, method)
        has_body = method in ("post", "put", "patch")
        for status in ("400", "415"):
            assert (status in codes) == has_body, (path, method, status)
        assert "413" not in codes  # no MAX_CONTENT_LENGTH, no Compression: nothing refuses
        has_query = (path, method) == ("/networks", "get")
        assert ("422" in codes) == (has_body or has_query), (path, method)
        rate_limited = (path, method) == ("/networks", "post")
        assert ("429" in codes) == rate_limited, (path, method)
        seen += 1
    assert seen >= 4
    get_one = document["paths"]["/networks/{network_id}"]["get"]
    assert codes_of(get_one)["409"] == ["CONFLICT"]
    assert codes_of(get_one)["404"] == ["NOT_FOUND"]
    create = document["paths"]["/networks"]["post"]
    retry_after = {"$ref": "#/components/headers/Retry-After"}
    assert create["responses"]["429"]["headers"]["Retry-After"] == retry_after
    assert "headers" not in create["responses"]["422"]
    rate_limited = document["components"]["responses"]["RateLimited"]
    assert rate_limited["headers"]["Retry-After"] == retry_after


def test_doc_decorator_describes_bodies_queries_and_responses() -> None:
    document = json_of(make_app().test_client().get("/openapi.json"))
    paths = document["paths"]
    assert "/internal" not in paths
    assert "/openapi.json" not in paths
    assert not any(path.startswith("/docs") for path in paths)
    create = paths["/networks"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Network"
    }
    assert create["requestBody"]["required"] is True
    assert "201" in create["responses"]
    assert "200" not in create["responses"]
    assert create["tags"] == ["networks"]
    listing = paths["/networks"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Network"},
    }
    query = {p["name"]: p for p in listing["parameters"]}
    assert set(query) == {"page", "per_page"}
    assert query["page"]["in"] == "query"
    assert query["page"]["schema"]["type"] == "integer"
    get_one = paths["/networks/{network_id}"]["get"]
    assert get_one["summary"] == "Fetch one network."
    assert get_one["description"] == "Networks are identified by an opaque string."
    assert get_one["parameters"] == [
        {"name": "network_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    network = document["components"]["schemas"]["Network"]
    assert network["properties"]["id"]["readOnly"] is True
    assert "null" in network["properties"]["description"]["type"]
    health = paths["/health"]["get"]
    assert set(health["responses"]) == {"200", "500"}


def test_doc_rejects_unknown_errors_and_bad_status() -> None:
    with pytest.raises(ValueError, match="no standard response"):
        doc(errors=[418])
    with pytest.raises(ValueError, match="status"):
        doc(status=500)


def test_blueprint_routes_are_tagged_and_converters_typed() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    bp = Blueprint("genes", __name__, url_prefix="/genes")

    @bp.route("/<uuid:gene_id>/<float:weight>", methods=["GET", "PUT"])
    def gene(gene_id: str, weight: float) -> str:
        return ""

    app.register_blueprint(bp)
    OpenAPI(app)
    document = json_of(app.test_client().get("/openapi.json"))
    validate(document)
    item = document["paths"]["/genes/{gene_id}/{weight}"]
    assert item["get"]["operationId"] == "genes.gene_get"
    assert item["put"]["operationId"] == "genes.gene_put"
    assert item["get"]["tags"] == ["genes"]
    params = {p["name"]: p["schema"] for p in item["get"]["parameters"]}
    assert params == {"gene_id": {"type": "string", "format": "uuid"}, "weight": {"type": "number"}}
    assert "422" in item["put"]["responses"]
    assert "422" not in item["get"]["responses"]


def test_each_version_has_its_own_document() -> None:
    client = make_versioned_app().test_client()
    whole = json_of(client.get("/openapi.json"))
    assert {"/api/v1/networks/{network_id}", "/api/v2/networks"} <= set(whole["paths"])
    assert whole["paths"]["/api/v1/networks/{network_id}"]["get"]["deprecated"] is True
    assert "deprecated" not in whole["paths"]["/api/v2/networks"]["get"]
    v1 = json_of(client.get("/openapi.json?version=v1"))
    validate(v1)
    assert set(v1["paths"]) == {"/api/v1/networks/{network_id}"}
    assert v1["info"]["title"] == "GRN service (v1)"
    assert v1["info"]["description"] == "Gene regulatory networks"
    assert whole["info"]["title"] == "GRN service"
    by_path = client.get("/api/v1/openapi.json")
    assert json_of(by_path) == v1
    assert by_path.headers["API-Version"] == "v1"
    assert "Deprecation" in by_path.headers
    v2 = json_of(client.get("/api/v2/openapi.json"))
    assert set(v2["paths"]) == {"/api/v2/networks"}
    assert set(v2["paths"]["/api/v2/networks"]) == {"get", "post"}


@pytest.mark.parametrize("url", ["/openapi.json?version=v9", "/api/v9/openapi.json"])
def test_unknown_version_document_is_a_404_envelope(url: str) -> None:
    response = make_versioned_app().test_client().get(url)
    assert response.status_code == 404
    error = json_of(response)["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["metadata"]["supported_versions"] == ["v1", "v2"]


def test_docs_page_uses_only_local_assets() -> None:
    client = make_versioned_app().test_client()
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    text = page.text
    assert "http://" not in text
    assert "https://" not in text
    assert '"validatorUrl": null' in text
    assets = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        response.close()
    assert "/openapi.json?version=v1" in text
    missing = client.get("/docs/assets/index.html")
    assert missing.status_code == 404
    assert json_of(missing)["error"]["code"] == "NOT_FOUND"
    assert client.get("/docs/assets/../openapi.json").status_code == 404


def test_shipped_swagger_ui_renders_openapi_3_1() -> None:
    directory = _swagger_ui_dir()
    assert directory is not None, "install the docs extra (swagger-ui-bundle-v2)"
    match = re.search(r"swagger-ui-(\d+)\.", directory.name)
    assert match is not None
    assert int(match.group(1)) >= 5
    assert (directory / "swagger-ui-bundle.js").stat().st_size > 100_000


def test_setup_is_validated_and_state_is_per_app() -> None:
    with pytest.raises(ValueError, match="spec_url"):
        OpenAPI(spec_url=None)
    app = make_app()
    assert app_state(app).features["openapi"]["extension"].title == "GRN service"
    with pytest.raises(RuntimeError, match="already"):
        OpenAPI(app)
    quiet = Flask(__name__)
    OpenAPI(quiet, spec_url=None, docs_url=None)
    assert quiet.test_client().get("/openapi.json").status_code == 404
    extension = OpenAPI(title="factory")
    other = Flask(__name__)
    extension.init_app(other)
    document = extension.spec(other)
    assert document["info"]["title"] == "factory"
    assert extension.spec(other) is document  # built once, then cached


# ---------------------------------------------------------------- edge cases found by mutation


def test_version_documents_split_at_segment_boundaries() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    api.version("v1", deprecated="2025-01-01").add_url_rule("/ping", "ping", lambda: "")
    api.version("v10").add_url_rule("/ping", "ping", lambda: "")
    OpenAPI(app)
    client = app.test_client()
    v1 = json_of(client.get("/openapi.json?version=v1"))
    assert set(v1["paths"]) == {"/api/v1/ping"}
    whole = json_of(client.get("/openapi.json"))
    assert whole["paths"]["/api/v1/ping"]["get"]["deprecated"] is True
    assert "deprecated" not in whole["paths"]["/api/v10/ping"]["get"]


def test_operation_ids_stay_unique_when_one_view_serves_two_paths() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/genes")
    @app.get("/genes/all")
    def genes() -> str:
        return ""

    OpenAPI(app)
    document = json_of(app.test_client().get("/openapi.json"))
    validate(document)
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert sorted(ids) == ["genes", "genes_2"]


def test_blueprint_static_files_and_extra_fields() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    bp = Blueprint("ui", __name__, static_folder="static", url_prefix="/ui")

    @bp.get("/secure")
    @doc(extra={"security": [{"bearer": []}]})
    def secure() -> str:
        return ""

    app.register_blueprint(bp)
    OpenAPI(app)
    document = json_of(app.test_client().get("/openapi.json"))
    assert set(document["paths"]) == {"/ui/secure"}
    assert document["paths"]["/ui/secure"]["get"]["security"] == [{"bearer": []}]


def test_docs_page_escapes_the_title_and_follows_the_script_root() -> None:
    hostile = "GRN</script><script>alert(1)</script>"
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    api.version("v1", deprecated="2025-01-01").add_url_rule("/ping", "ping", lambda: "")
    api.version("v2").add_url_rule("/ping", "ping", lambda: "")
    OpenAPI(app, title=hostile)
    page = app.test_client().get("/docs", environ_overrides={"SCRIPT_NAME": "/grn"}).text
    # The title never closes an element early: escaped in <title>, "<\/" in the script.
    assert hostile not in page
    assert "<title>GRN&lt;/script&gt;" in page
    assert page.count("</script>") == 3  # the page's own three scripts
    assert '"/grn/openapi.json"' in page
    assert 'src="/grn/docs/assets/swagger-ui-bundle.js"' in page
    # The dropdown lists the whole API first, then the newest version.
    whole = page.index('"/grn/openapi.json"')
    assert whole < page.index("/grn/openapi.json?version=v2") < page.index("?version=v1")
