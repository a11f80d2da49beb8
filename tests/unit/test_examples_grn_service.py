"""The GRN service through Flask's test client: storage, versions, validation,
compression and docs."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from examples.grn_service import (
    MAX_EDGES,
    MAX_NODES,
    NetworkStore,
    create_app,
    default_database_path,
)
from gennet_sync import ConflictError, NotFoundError

TOGGLE = {
    "name": "toggle",
    "nodes": ["x", "y"],
    "edges": [
        {"source": "x", "target": "y", "sign": -1},
        {"source": "y", "target": "x", "sign": -1},
    ],
}


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return create_app({"TESTING": True, "DATABASE": str(tmp_path / "grn.sqlite3")}).test_client()


def create(client: FlaskClient, body: dict[str, Any], version: str = "v2") -> Any:
    return client.post(f"/api/{version}/networks", json=body)


def test_create_get_delete_round_trip(client: FlaskClient) -> None:
    created = create(client, TOGGLE)
    assert created.status_code == 201
    network = created.get_json()
    assert network["name"] == "toggle"
    assert network["nodes"] == ["x", "y"]
    assert network["edges"] == TOGGLE["edges"]
    assert len(network["id"]) == 32

    fetched = client.get(f"/api/v2/networks/{network['id']}")
    assert fetched.status_code == 200
    assert fetched.get_json() == network

    assert client.delete(f"/api/v2/networks/{network['id']}").status_code == 204
    gone = client.get(f"/api/v2/networks/{network['id']}")
    assert gone.status_code == 404
    assert gone.get_json()["error"] == {
        "code": "NOT_FOUND",
        "type": "NotFoundError",
        "message": f"Network with id '{network['id']}' not found",
        "metadata": {"resource_type": "Network", "resource_id": network["id"]},
    }
    assert client.delete(f"/api/v1/networks/{network['id']}").status_code == 404


def test_edges_are_optional(client: FlaskClient) -> None:
    created = create(client, {"name": "lonely", "nodes": ["a"]})
    assert created.status_code == 201
    assert created.get_json()["edges"] == []


def test_v1_is_deprecated_and_v2_is_not(client: FlaskClient) -> None:
    created = create(client, TOGGLE, version="v1")
    assert created.status_code == 201
    assert created.headers["API-Version"] == "v1"
    assert created.headers["Deprecation"].startswith("@")
    assert "Sunset" in created.headers
    assert 'rel="deprecation"' in created.headers["Link"]
    current = client.get("/api/v2/networks")
    assert current.headers["API-Version"] == "v2"
    assert "Deprecation" not in current.headers


def test_v1_lists_everything_and_v2_pages(client: FlaskClient) -> None:
    names = [f"net-{i}" for i in range(7)]
    for name in names:
        assert create(client, {"name": name, "nodes": ["a", "b"]}).status_code == 201

    listed = client.get("/api/v1/networks").get_json()
    assert [n["name"] for n in listed] == names
    assert listed[0]["node_count"] == 2
    assert listed[0]["edge_count"] == 0
    assert "nodes" not in listed[0]

    seen: list[str] = []
    url = "/api/v2/networks?limit=3"
    pages = 0
    while url:
        page = client.get(url).get_json()
        pages += 1
        seen += [item["name"] for item in page["items"]]
        url = f"/api/v2/networks?limit=3&cursor={page['next']}" if page["next"] else ""
    assert seen == names
    assert pages == 3


def test_v2_rejects_bad_paging(client: FlaskClient) -> None:
    bad_cursor = client.get("/api/v2/networks?cursor=not-a-cursor")
    assert bad_cursor.status_code == 422
    assert bad_cursor.get_json()["error"]["metadata"]["field"] == "cursor"
    bad_limit = client.get("/api/v2/networks?limit=500")
    assert bad_limit.status_code == 422
    assert "limit" in bad_limit.get_json()["error"]["metadata"]["fields"]


def test_unknown_version_names_the_supported_ones(client: FlaskClient) -> None:
    response = client.get("/api/v3/networks")
    assert response.status_code == 404
    assert response.get_json()["error"]["metadata"]["supported_versions"] == ["v1", "v2"]


def test_too_many_nodes_is_a_validation_error_on_nodes(client: FlaskClient) -> None:
    nodes = [f"g{i}" for i in range(MAX_NODES + 1)]
    response = create(client, {"name": "huge", "nodes": nodes})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["type"] == "ValidationError"
    assert error["metadata"]["field"] == "nodes"
    assert error["metadata"]["max_nodes"] == MAX_NODES
    at_limit = create(client, {"name": "big", "nodes": nodes[:MAX_NODES]})
    assert at_limit.status_code == 201


def test_too_many_edges_is_refused_before_validation(client: FlaskClient) -> None:
    edge = {"source": "a", "target": "a", "sign": 1}
    response = create(client, {"name": "dense", "nodes": ["a"], "edges": [edge] * (MAX_EDGES + 1)})
    assert response.status_code == 422
    assert response.get_json()["error"]["metadata"] == {"field": "edges", "max_edges": MAX_EDGES}


def test_edges_must_name_existing_nodes(client: FlaskClient) -> None:
    body = {
        "name": "bad",
        "nodes": ["x", "y"],
        "edges": [
            {"source": "x", "target": "y", "sign": 1},
            {"source": "x", "target": "ghost", "sign": 1},
        ],
    }
    response = create(client, body)
    assert response.status_code == 422
    fields = response.get_json()["error"]["metadata"]["fields"]
    assert fields == {"edges": {"1": {"target": ["Unknown node 'ghost'"]}}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"nodes": ["a"]}, "name"),
        ({"name": "n", "nodes": []}, "nodes"),
        ({"name": "n", "nodes": ["a", "a"]}, "nodes"),
        (
            {"name": "n", "nodes": ["a"], "edges": [{"source": "a", "target": "a", "sign": 0}]},
            "edges",
        ),
        ({"name": "n", "nodes": ["a"], "colour": "red"}, "colour"),
    ],
)
def test_body_validation_is_per_field(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = create(client, body)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["metadata"]["fields"]


def test_duplicate_name_is_a_conflict(client: FlaskClient) -> None:
    assert create(client, TOGGLE).status_code == 201
    again = create(client, TOGGLE, version="v1")
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "CONFLICT"
    assert again.get_json()["error"]["metadata"] == {"name": "toggle"}


def test_responses_are_compressed_and_bodies_may_be(client: FlaskClient) -> None:
    nodes = [f"gene_{i}" for i in range(500)]
    body = gzip.compress(json.dumps({"name": "big", "nodes": nodes}).encode())
    created = client.post(
        "/api/v2/networks",
        data=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert created.status_code == 201
    fetched = client.get(
        f"/api/v2/networks/{created.get_json()['id']}", headers={"Accept-Encoding": "gzip"}
    )
    assert fetched.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(fetched.data))["nodes"] == nodes


def test_openapi_document_is_valid_and_documents_both_versions(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert "/api/v2/networks/{network_id}" in spec["paths"]
    create_op = spec["paths"]["/api/v1/networks"]["post"]
    assert create_op["deprecated"] is True
    assert {"201", "409", "422"} <= set(create_op["responses"])
    assert "404" in spec["paths"]["/api/v2/networks/{network_id}"]["get"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert b"swagger" in docs.data.lower()


def test_database_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.sqlite3"
    monkeypatch.setenv("GRN_DATABASE", str(path))
    assert default_database_path() == str(path)
    client = create_app({"TESTING": True}).test_client()
    assert create(client, TOGGLE).status_code == 201
    assert path.exists()
    monkeypatch.delenv("GRN_DATABASE")
    assert default_database_path().endswith("gennet_grn.sqlite3")


def test_store_is_in_wal_mode_and_raises_library_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "store.sqlite3")
    NetworkStore.initialise(path)
    with NetworkStore(path) as store:
        assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.connection.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        network = store.create("n", ["a"], [])
        with pytest.raises(ConflictError):
            store.create("n", ["b"], [])
        store.delete(network["id"])
        with pytest.raises(NotFoundError):
            store.get(network["id"])


@pytest.mark.parametrize(
    ("raw_body", "field"),
    [
        (b'{"name": "\\ud800", "nodes": ["a"]}', "name"),
        (b'{"name": "lone", "nodes": ["a", "\\udfff"]}', "nodes"),
    ],
)
def test_lone_surrogates_are_a_validation_error(
    client: FlaskClient, raw_body: bytes, field: str
) -> None:
    # JSON may escape a lone surrogate, but no UTF-8 text (nor SQLite) can hold one.
    response = client.post("/api/v2/networks", data=raw_body, content_type="application/json")
    assert response.status_code == 422
    messages = json.dumps(response.get_json()["error"]["metadata"]["fields"][field])
    assert "surrogate" in messages


@pytest.mark.parametrize(
    "decoded",
    [
        "seq:99999999999999999999999999",  # beyond SQLite's 64-bit integers
        "seq:\u0661\u0662",  # digits, but not ASCII ones
        "seq:",
        "page:3",
    ],
)
def test_forged_cursors_are_a_validation_error(client: FlaskClient, decoded: str) -> None:
    cursor = base64.urlsafe_b64encode(decoded.encode()).decode()
    response = client.get(f"/api/v2/networks?cursor={cursor}")
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["metadata"]["field"] == "cursor"
    assert "cursor" in error["message"]


def test_a_write_lock_held_past_the_busy_timeout_is_a_503_with_retry_after(
    tmp_path: Path,
) -> None:
    database = str(tmp_path / "busy.sqlite3")
    app = create_app({"TESTING": True, "DATABASE": database, "BUSY_TIMEOUT": 0.05})
    with NetworkStore(database) as other_worker:
        other_worker.connection.execute("BEGIN IMMEDIATE")  # another worker mid-write
        response = create(app.test_client(), TOGGLE)
        other_worker.connection.execute("ROLLBACK")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    error = response.get_json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert "busy" in error["message"]
    assert create(app.test_client(), TOGGLE).status_code == 201


COMPOSED = "caf\u00e9"  # é as one code point
DECOMPOSED = "cafe\u0301"  # e + combining acute accent: looks the same


def test_a_composed_and_a_decomposed_name_are_one_name(client: FlaskClient) -> None:
    first = create(client, {"name": COMPOSED, "nodes": ["x"]})
    assert first.status_code == 201
    second = create(client, {"name": DECOMPOSED, "nodes": ["x"]})
    assert second.status_code == 409  # stored twice before: two networks that look alike
    listed = client.get("/api/v1/networks").get_json()
    assert [network["name"] for network in listed] == [COMPOSED]


def test_node_names_are_normalised_before_they_are_compared(client: FlaskClient) -> None:
    duplicates = create(client, {"name": "n", "nodes": [COMPOSED, DECOMPOSED]})
    assert duplicates.status_code == 422
    assert "Duplicate nodes" in json.dumps(duplicates.get_json()["error"]["metadata"])
    # An edge may name a node in either form; the network stores NFC.
    body = {
        "name": "n",
        "nodes": [DECOMPOSED, "gene"],
        "edges": [{"source": COMPOSED, "target": "gene", "sign": 1}],
    }
    created = create(client, body)
    assert created.status_code == 201, created.get_json()
    stored = client.get(f"/api/v2/networks/{created.get_json()['id']}").get_json()
    assert stored["nodes"] == [COMPOSED, "gene"]
    assert stored["edges"] == [{"source": COMPOSED, "target": "gene", "sign": 1}]


def test_surrounding_whitespace_is_dropped_and_case_is_kept(client: FlaskClient) -> None:
    assert create(client, {"name": " toggle\t", "nodes": ["TP53", "Trp53"]}).status_code == 201
    assert create(client, {"name": "toggle", "nodes": ["x"]}).status_code == 409
    # Case is significant: human TP53 and mouse Trp53 are different genes.
    assert create(client, {"name": "Toggle", "nodes": ["x"]}).status_code == 201
    assert create(client, {"name": "   ", "nodes": ["x"]}).status_code == 422


@pytest.mark.parametrize("name", ["a\x00b", "two\nlines", "bell\x07"])
def test_control_characters_in_names_are_a_validation_error(client: FlaskClient, name: str) -> None:
    response = create(client, {"name": name, "nodes": [name]})
    assert response.status_code == 422
    fields = response.get_json()["error"]["metadata"]["fields"]
    assert "Control character" in json.dumps(fields["name"])
    assert "Control character" in json.dumps(fields["nodes"])


def test_the_store_normalises_names_given_to_it_directly(tmp_path: Path) -> None:
    path = str(tmp_path / "direct.sqlite3")
    NetworkStore.initialise(path)
    with NetworkStore(path) as store:
        network = store.create(DECOMPOSED, [DECOMPOSED], [])
        assert store.get(network["id"])["name"] == COMPOSED
        assert store.get(network["id"])["nodes"] == [COMPOSED]
        with pytest.raises(ConflictError):
            store.create(COMPOSED, ["x"], [])
