"""gennet_sync.testing: the check that no response carries an undocumented error code.

Each form of the check (one response, a checking test client, the schemathesis
check) is shown failing on an app that returns a code on purpose without
declaring it, and passing what the document does say.
"""

from __future__ import annotations

import gzip
import json
from typing import Any, ClassVar

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import CHECKS
from schemathesis.errors import FailureGroup

from gennet_sync import (
    Compression,
    ConflictError,
    GenNetException,
    NotFoundError,
    OpenAPI,
    doc,
    setup_error_handlers,
)
from gennet_sync.compression import compress_bytes
from gennet_sync.testing import (
    UndocumentedErrorCode,
    assert_documented_error,
    documented_error_codes,
    documented_errors_client,
    error_contract_violation,
    register_schemathesis_check,
    undocumented_error_codes,
)
from tests.support.api_cases import operation_cases

# The documented schemathesis snippets run as a user runs them: a test module
# of their own, collected by schemathesis's pytest plugin (in this process).
pytest_plugins = ["pytester"]


class NetworkGoneError(GenNetException):
    """The network was deleted."""

    status_code = 404
    code = "NETWORK_GONE"


def make_app() -> Flask:
    """Views that answer documented errors, and two that do not on purpose."""
    app = Flask(__name__)
    setup_error_handlers(app)
    Compression(app, min_size=10)

    @app.get("/networks/<network_id>")
    @doc(errors=[NotFoundError])
    def get_network(network_id: str) -> str:
        if network_id == "gone":  # 404 is documented, this code is not
            raise NetworkGoneError(metadata={"id": network_id, "padding": "x" * 500})
        raise NotFoundError("Network", network_id)

    @app.post("/networks")
    @doc()
    def create_network() -> tuple[str, int]:
        raise ConflictError("taken")  # 409 is documented nowhere

    @app.get("/plain-404")
    @doc()
    def plain() -> tuple[str, int]:
        return "not an envelope", 404

    @app.get("/hidden")
    @doc(hidden=True)
    def hidden() -> str:
        raise ConflictError("hidden views are not checked")

    OpenAPI(app)
    return app


def test_documented_codes_are_read_from_the_document() -> None:
    app = make_app()
    document = app.test_client().get("/openapi.json").get_json()
    assert documented_error_codes(document, "GET", "/networks/{network_id}") == {
        "404": frozenset({"NOT_FOUND"}),
        "500": frozenset({"INTERNAL_SERVER_ERROR"}),
        # Compression decodes a GET's body too.
        "400": frozenset({"BAD_REQUEST"}),
        "413": frozenset({"REQUEST_ENTITY_TOO_LARGE"}),
        "415": frozenset({"UNSUPPORTED_MEDIA_TYPE"}),
    }
    assert documented_error_codes(document, "delete", "/networks/{network_id}") is None
    assert documented_error_codes(document, "get", "/nowhere") is None
    # A response without codes (a hand-written one) lets any code through.
    document["paths"]["/networks"]["post"]["responses"]["409"] = {"$ref": "#/x/y"}
    document["x"] = {"y": {"description": "conflict"}}
    assert documented_error_codes(document, "post", "/networks")["409"] is None  # type: ignore[index]


def test_a_deliberately_undocumented_code_fails_the_check() -> None:
    app = make_app()
    client = app.test_client()
    gone = client.get("/networks/gone")
    assert gone.status_code == 404
    with pytest.raises(UndocumentedErrorCode, match=r"'NETWORK_GONE'.*documented: \['NOT_FOUND'\]"):
        assert_documented_error(app, gone)
    conflict = client.post("/networks")
    with pytest.raises(UndocumentedErrorCode, match=r"409 with code 'CONFLICT'.*a status"):
        assert_documented_error(app, conflict)


def test_documented_answers_and_what_no_operation_serves_pass() -> None:
    app = make_app()
    client = app.test_client()
    for response in (
        client.get("/networks/abc"),  # documented 404
        client.get("/plain-404"),  # not an envelope
        client.get("/hidden"),  # not in the document
        client.get("/nowhere"),  # no operation
        client.delete("/networks/abc"),  # 405: no operation
        client.head("/networks/gone"),  # no body to read
        client.get("/openapi.json"),
    ):
        assert_documented_error(app, response)


def test_a_get_body_compression_cannot_decode_is_a_documented_error() -> None:
    app = make_app()
    client = documented_errors_client(app)
    for headers, body in (
        ({"Content-Encoding": "bogus"}, b"x"),
        ({"Content-Encoding": "gzip"}, b"\x1f\x8bnot gzip"),
    ):
        # documented_errors_client raises if the GET does not document the answer.
        assert client.get("/networks/abc", data=body, headers=headers).status_code == 400
    anywhere = app.extensions["gennet_sync"].features["openapi"]["extension"].catalogue(app)
    decoding = {
        (row["status"], row["code"]) for row in anywhere.to_dict()["errors"] if row["any_request"]
    }
    assert {(400, "BAD_REQUEST"), (413, "REQUEST_ENTITY_TOO_LARGE")} <= decoding
    assert (415, "UNSUPPORTED_MEDIA_TYPE") in decoding


def gone_json() -> bytes:
    return json.dumps(NetworkGoneError().to_dict()).encode()


def test_a_compressed_envelope_is_read_before_it_is_checked() -> None:
    app = make_app()
    gone = app.test_client().get("/networks/gone", headers={"Accept-Encoding": "gzip"})
    assert gone.headers["Content-Encoding"] == "gzip"
    with pytest.raises(UndocumentedErrorCode, match="NETWORK_GONE"):
        assert_documented_error(app, gone)
    document = app.test_client().get("/openapi.json").get_json()
    body = gzip.compress(json.dumps(NetworkGoneError().to_dict()).encode())
    path = "/networks/{network_id}"
    assert error_contract_violation(document, "GET", path, 404, body, "gzip")
    for coding in ("br", "zstd", "deflate"):
        encoded = compress_bytes(json.dumps(NetworkGoneError().to_dict()).encode(), coding)
        assert error_contract_violation(document, "GET", path, 404, encoded, coding)
    # A body a client has decoded already, its header left on: read as it is.
    assert error_contract_violation(document, "GET", path, 404, body[:0] + gone_json(), "br")
    with pytest.raises(UndocumentedErrorCode, match="Content-Encoding: compress"):
        error_contract_violation(document, "GET", path, 404, b"\x1f\x9d", "compress")


def test_the_checking_client_fails_the_request_that_breaks_the_contract() -> None:
    client = documented_errors_client(make_app())
    assert client.get("/networks/abc").status_code == 404
    with pytest.raises(UndocumentedErrorCode, match="NETWORK_GONE"):
        client.get("/networks/gone")


def test_a_requests_response_from_a_served_app_is_checked_too() -> None:
    app = make_app()
    response = requests.Response()
    response.status_code = 409
    response._content = json.dumps(ConflictError("taken").to_dict()).encode()
    response.headers["Content-Type"] = "application/json"
    response.request = requests.Request("POST", "http://127.0.0.1:5000/networks").prepare()
    with pytest.raises(UndocumentedErrorCode, match="POST /networks answered 409"):
        assert_documented_error(app, response)
    response.request = requests.Request("POST", "http://127.0.0.1:5000/elsewhere").prepare()
    assert_documented_error(app, response)


def test_an_app_without_openapi_is_a_clear_error() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)
    with pytest.raises(RuntimeError, match="no OpenAPI"):
        assert_documented_error(app, app.test_client().get("/"))


# ------------------------------------------------------------------ schemathesis


@pytest.fixture(scope="module")
def cases() -> st.SearchStrategy[Case[Any]]:
    return operation_cases(make_app(), [GenerationMode.POSITIVE])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_schemathesis_check_fails_exactly_on_the_undocumented_codes(
    cases: st.SearchStrategy[Case[Any]], data: st.DataObject
) -> None:
    case = data.draw(cases)
    response = case.call()
    # Not the body: Compression sends NETWORK_GONE's (padded) envelope compressed.
    gone = (case.path_parameters or {}).get("network_id") == "gone"
    undocumented = response.status_code == 409 or (response.status_code == 404 and gone)
    if undocumented:
        with pytest.raises(FailureGroup) as failure:
            case.validate_response(response, checks=[undocumented_error_codes])
        message = failure_text(failure.value)
        assert "NETWORK_GONE" in message or "'CONFLICT'" in message, message
        assert "Declare the error on the view" in message
    else:
        case.validate_response(response, checks=[undocumented_error_codes])


def failure_text(group: FailureGroup) -> str:
    return "\n".join(str(failure) for failure in group.exceptions)


def test_schemathesis_finds_the_undocumented_code_by_itself() -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", make_app())
    operation = schema["/networks/{network_id}"]["GET"]
    case = operation.Case(path_parameters={"network_id": "gone"})
    with pytest.raises(FailureGroup) as failure:
        case.call_and_validate(checks=[undocumented_error_codes])
    assert "'NETWORK_GONE'" in failure_text(failure.value)
    fine = operation.Case(path_parameters={"network_id": "abc"})
    fine.call_and_validate(checks=[undocumented_error_codes])


_SNIPPET_APP = """
import schemathesis
from flask import Flask
from gennet_sync import Compression, ConflictError, NotFoundError, OpenAPI, doc
from gennet_sync import setup_error_handlers

def create_app(undocumented):
    app = Flask("svc")
    setup_error_handlers(app)
    if COMPRESSED:
        Compression(app)

    @app.get("/things/<tid>")
    @doc()
    def thing(tid):
        if undocumented:
            raise ConflictError("409 is documented nowhere")
        if tid != "1":
            raise NotFoundError("Thing", tid)
        return {"id": tid}

    OpenAPI(app, title="svc", version="1")
    return app

schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(UNDOCUMENTED))
"""
_ADDITIONAL_CHECKS = """
from gennet_sync.testing import undocumented_error_codes

@schema.parametrize()
def test_api(case):
    case.call_and_validate(HEADERSadditional_checks=[undocumented_error_codes])
"""
_REGISTERED = """
@schema.parametrize()
def test_api(case):
    case.call_and_validate(HEADERS)
"""
_REGISTERING_CONFTEST = """
from gennet_sync.testing import register_schemathesis_check

register_schemathesis_check()
"""


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("way", ["additional_checks", "registered"])
@pytest.mark.parametrize("undocumented", [False, True])
def test_the_documented_schemathesis_snippets(
    pytester: pytest.Pytester, way: str, undocumented: bool, compressed: bool
) -> None:
    # schemathesis also sends methods an operation does not have (TRACE to a
    # GET): their 405 is an error any request can get, not the operation's.
    app = _SNIPPET_APP.replace("UNDOCUMENTED", str(undocumented))
    app = app.replace("COMPRESSED", str(compressed))
    # With Compression, as the docs say: schemathesis's WSGI transport does not decode.
    headers = 'headers={"Accept-Encoding": "identity"}, ' if compressed else ""
    if way == "registered":
        pytester.makeconftest(_REGISTERING_CONFTEST)
        test = _REGISTERED.replace("HEADERS", headers.rstrip(", "))
    else:
        test = _ADDITIONAL_CHECKS.replace("HEADERS", headers)
    pytester.makepyfile(test_api=app + test)
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    finally:
        if "undocumented_error_codes" in CHECKS.get_all_names():
            CHECKS.unregister("undocumented_error_codes")
    output = result.stdout.str()
    if undocumented:
        result.assert_outcomes(failed=1)
        assert "GET /things/{tid} answered 409 with code 'CONFLICT'" in output
    else:
        result.assert_outcomes(passed=1)
    assert "a method the operation does not have" not in output


def test_a_method_the_operation_does_not_have_is_judged_by_the_any_request_codes() -> None:
    document = {
        "paths": {"/things": {"get": {"responses": {"200": {"description": "ok"}}}}},
        "x-error-codes-any-request": {"405": ["METHOD_NOT_ALLOWED"]},
    }

    class Sent:
        method = "TRACE"

    class Operation:
        method = "GET"
        path = "/things"
        schema = type("Schema", (), {"raw_schema": document})

    class Answer:
        request = Sent()
        headers: ClassVar[dict[str, Any]] = {}

        def __init__(self, status: int, code: str) -> None:
            self.status_code = status
            self.content = json.dumps({"error": {"code": code, "type": "X"}}).encode()

    case = type("CaseLike", (), {"operation": Operation()})()
    assert undocumented_error_codes(None, Answer(405, "METHOD_NOT_ALLOWED"), case) is None
    with pytest.raises(UndocumentedErrorCode, match=r"TRACE /things .*'CONFLICT'"):
        undocumented_error_codes(None, Answer(409, "CONFLICT"), case)
    with pytest.raises(UndocumentedErrorCode, match="GET /things answered 405"):
        Sent.method = "GET"  # the operation's own method: its documented errors only
        undocumented_error_codes(None, Answer(405, "METHOD_NOT_ALLOWED"), case)


def test_register_schemathesis_check_adds_it_to_every_run() -> None:
    try:
        registered = register_schemathesis_check()
        assert registered is undocumented_error_codes
        assert "undocumented_error_codes" in CHECKS.get_all_names()
    finally:
        CHECKS.unregister("undocumented_error_codes")
