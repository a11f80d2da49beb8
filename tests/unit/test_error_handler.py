"""Every error a Flask app returns is the envelope, with the right status and
headers (Flask's test client)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import marshmallow
import pytest
from flask import Flask, abort, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from gennet_sync import (
    GenNet,
    GenNetException,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    current_request_id,
    setup_error_handlers,
)
from gennet_sync.error_handler import EXTENSION_KEY, AppState, app_state, http_status_code
from gennet_sync.exceptions import MAX_FIELD_ERRORS
from tests.support.error_app import make_app


@pytest.fixture
def client() -> Any:
    return make_app().test_client()


def error_of(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "type", "message", "metadata"}
    return body["error"]  # type: ignore[no-any-return]


def test_our_exception_keeps_status_code_type_message_and_metadata(client: Any) -> None:
    response = client.get("/networks/abc123")
    assert response.status_code == 404
    assert error_of(response) == {
        "code": "NOT_FOUND",
        "type": "NotFoundError",
        "message": "Network with id 'abc123' not found",
        "metadata": {"resource_type": "Network", "resource_id": "abc123"},
    }


@pytest.mark.parametrize(
    ("path", "status", "code", "retry_after"),
    [("/busy", 503, "SERVICE_UNAVAILABLE", "7"), ("/limited", 429, "RATE_LIMIT_EXCEEDED", "2")],
)
def test_retry_after_reaches_the_response_header(
    client: Any, path: str, status: int, code: str, retry_after: str
) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["Retry-After"] == retry_after
    assert error_of(response)["code"] == code


def test_marshmallow_errors_are_422_with_per_field_messages(client: Any) -> None:
    response = client.post("/networks", json={"nodes": "not-a-list"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert error["type"] == "ValidationError"
    assert error["metadata"]["fields"] == {
        "name": ["Missing data for required field."],
        "nodes": ["Not a valid list."],
    }


def test_marshmallow_422_message_names_the_first_problem_and_counts_the_rest(
    client: Any,
) -> None:
    response = client.post("/networks", json={"name": "toggle", "nodes": "not-a-list"})
    assert error_of(response)["message"] == ("Request validation failed: nodes: Not a valid list.")
    both = client.post("/networks", json={"nodes": "not-a-list"})
    assert error_of(both)["message"] == (
        "Request validation failed: name: Missing data for required field. (and 1 more)"
    )


def test_nested_marshmallow_errors_are_named_by_their_path() -> None:
    class EdgeSchema(marshmallow.Schema):
        sign = marshmallow.fields.Integer(
            required=True, validate=marshmallow.validate.OneOf([-1, 1])
        )

    class GraphSchema(marshmallow.Schema):
        edges = marshmallow.fields.List(marshmallow.fields.Nested(EdgeSchema))

    app = Flask("nested")
    setup_error_handlers(app)

    @app.post("/graphs")
    def graphs() -> dict[str, Any]:
        loaded: dict[str, Any] = GraphSchema().load(request.get_json())
        return loaded

    response = app.test_client().post("/graphs", json={"edges": [{"sign": 1}, {"sign": 0}]})
    assert response.status_code == 422
    assert error_of(response)["message"] == (
        "Request validation failed: edges.1.sign: Must be one of: -1, 1."
    )
    assert error_of(response)["metadata"]["fields"] == {
        "edges": {"1": {"sign": ["Must be one of: -1, 1."]}}
    }


def test_marshmallow_error_raised_anywhere_in_a_view_is_422(client: Any) -> None:
    response = client.get("/validate-later")
    assert response.status_code == 422
    assert set(error_of(response)["metadata"]["fields"]) == {"name", "nodes"}


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (marshmallow.ValidationError("Edges form a cycle"), {"_schema": ["Edges form a cycle"]}),
        (marshmallow.ValidationError("Too long", field_name="name"), {"name": ["Too long"]}),
    ],
)
def test_marshmallow_messages_without_a_field_are_still_per_field(
    error: marshmallow.ValidationError, fields: dict[str, Any]
) -> None:
    app = make_app()

    @app.get("/by-hand")
    def by_hand() -> str:
        raise error

    response = app.test_client().get("/by-hand")
    assert response.status_code == 422
    assert error_of(response)["metadata"] == {"fields": fields}


def test_unknown_route_is_a_404_envelope(client: Any) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404
    error = error_of(response)
    assert (error["code"], error["type"]) == ("NOT_FOUND", "NotFound")


def test_wrong_method_is_405_and_keeps_the_allow_header(client: Any) -> None:
    response = client.delete("/networks/abc")
    assert response.status_code == 405
    assert error_of(response)["code"] == "METHOD_NOT_ALLOWED"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_www_authenticate_and_retry_after_of_werkzeug_errors_are_kept(client: Any) -> None:
    unauthorized = client.get("/login")
    assert unauthorized.status_code == 401
    assert unauthorized.headers["WWW-Authenticate"] == "Bearer realm=grn"
    assert error_of(unauthorized)["code"] == "UNAUTHORIZED"
    too_many = client.get("/slow-down")
    assert too_many.headers["Retry-After"] == "12"
    assert error_of(too_many)["code"] == "TOO_MANY_REQUESTS"


def test_any_werkzeug_status_gets_its_phrase_as_code(client: Any) -> None:
    response = client.get("/teapot")
    assert response.status_code == 418
    assert error_of(response)["code"] == "I_M_A_TEAPOT"
    assert http_status_code(413) == "REQUEST_ENTITY_TOO_LARGE"
    assert http_status_code(415) == "UNSUPPORTED_MEDIA_TYPE"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "says"),
    [
        (b'{"name": "toggle",', "application/json", 400, "BAD_REQUEST", "line 1 column 19"),
        (b"\xff\xfe\xfd", "application/json", 400, "BAD_REQUEST", "decode JSON"),
        (b'{"name": "x"}', "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
        (b"[" * 600 + b"]" * 600, "application/json", 413, "REQUEST_ENTITY_TOO_LARGE", ""),
        (b"[" * 1000, "application/json", 400, "BAD_REQUEST", "decode JSON"),
    ],
    ids=["truncated", "invalid-utf8", "wrong-content-type", "too-large", "unbalanced"],
)
def test_malformed_bodies_are_4xx_envelopes_that_say_what_was_wrong(
    client: Any, body: bytes, content_type: str, status: int, code: str, says: str
) -> None:
    response = client.post("/networks", data=body, content_type=content_type)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert says in error["message"]


def test_deeply_nested_json_is_a_400_not_a_recursion_crash() -> None:
    app = make_app(MAX_CONTENT_LENGTH=None)
    depth = 100_000
    response = app.test_client().post(
        "/networks", data=b"[" * depth + b"]" * depth, content_type="application/json"
    )
    assert response.status_code == 400
    assert "nested too deeply" in error_of(response)["message"]


def test_crash_in_production_leaks_nothing(client: Any) -> None:
    response = client.get("/crash")
    assert response.status_code == 500
    assert error_of(response) == {
        "code": "INTERNAL_SERVER_ERROR",
        "type": "InternalServerError",
        "message": "Internal server error",
        "metadata": {},
    }
    text = response.get_data(as_text=True)
    for secret in ("hunter2", "secret.py", "RuntimeError", "Traceback"):
        assert secret not in text


def test_crash_is_logged_with_traceback_and_request_id(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gennet_sync"):
        response = client.get("/crash", headers={"X-Request-ID": "req-42"})
    assert response.headers["X-Request-ID"] == "req-42"
    [record] = [r for r in caplog.records if r.name == "gennet_sync.error_handler"]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert record.request_id == "req-42"  # type: ignore[attr-defined]
    assert "GET /crash" in record.getMessage()


def test_every_www_authenticate_challenge_is_kept() -> None:
    app = make_app()

    @app.get("/two-schemes")
    def two_schemes() -> str:
        raise Unauthorized(
            www_authenticate=[
                WWWAuthenticate("basic", {"realm": "grn"}),
                WWWAuthenticate("bearer", {"realm": "grn"}),
            ]
        )

    response = app.test_client().get("/two-schemes")
    assert response.status_code == 401
    assert response.headers.getlist("WWW-Authenticate") == [
        "Basic realm=grn",
        "Bearer realm=grn",
    ]


def hooked_app(**config: Any) -> Flask:
    """An app whose hooks and error handlers fail, registered around the extension."""
    app = Flask("hooked")
    app.config.update(config)

    @app.before_request
    def before_ours() -> None:
        if request.path == "/fails-before":
            raise RuntimeError("password=hunter2 before")

    setup_error_handlers(app)

    @app.after_request
    def after(response: Any) -> Any:
        if request.path == "/fails-after":
            raise RuntimeError("password=hunter2 after")
        return response

    @app.errorhandler(KeyError)
    def translate_key_error(error: KeyError) -> str:
        if request.path == "/handler-crashes":
            raise RuntimeError("password=hunter2 handler")
        raise NotFoundError("Network", error.args[0])

    @app.get("/fails-before")
    @app.get("/fails-after")
    def fine() -> str:
        return "fine"

    @app.get("/handler-translates")
    @app.get("/handler-crashes")
    def missing() -> str:
        raise KeyError("abc")

    return app


@pytest.mark.parametrize("path", ["/fails-after", "/handler-crashes"])
def test_a_crash_in_an_after_request_hook_or_error_handler_leaks_nothing(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = hooked_app().test_client().get(path, headers={"X-Request-ID": "req-7"})
    assert response.status_code == 500
    assert error_of(response) == {
        "code": "INTERNAL_SERVER_ERROR",
        "type": "InternalServerError",
        "message": "Internal server error",
        "metadata": {},
    }
    assert "hunter2" not in response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] == "req-7"
    crashes = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert crashes
    assert {r.request_id for r in crashes} == {"req-7"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/fails-after", "/handler-crashes"])
def test_a_crash_in_an_after_request_hook_or_error_handler_is_exposed_like_any_crash(
    path: str,
) -> None:
    response = hooked_app(GENNET_EXPOSE_ERRORS=True).test_client().get(path)
    metadata = error_of(response)["metadata"]
    assert metadata["exception_type"] == "RuntimeError"
    assert "hunter2" in metadata["exception_message"]


def test_an_exception_whose_rendering_fails_is_a_generic_500_envelope() -> None:
    class BrokenHeadersError(GenNetException):
        status_code = 429
        code = "SLOW_DOWN"

        def get_headers(self) -> dict[str, str]:
            raise RuntimeError("password=hunter2 in headers")

    app = make_app()

    @app.get("/broken")
    def broken() -> str:
        raise BrokenHeadersError("slow down")

    response = app.test_client().get("/broken")
    assert response.status_code == 500
    assert error_of(response)["code"] == "INTERNAL_SERVER_ERROR"
    assert "hunter2" not in response.get_data(as_text=True)


def test_an_error_handler_that_raises_our_exception_gets_its_envelope() -> None:
    response = hooked_app().test_client().get("/handler-translates")
    assert response.status_code == 404
    assert error_of(response)["code"] == "NOT_FOUND"


def test_a_crash_in_teardown_reaches_the_test_client_when_testing() -> None:
    app = make_app(TESTING=True)

    @app.teardown_request
    def close_database(_error: BaseException | None) -> None:
        raise RuntimeError("teardown")

    with pytest.raises(RuntimeError, match="teardown"):
        app.test_client().get("/request-id")
    # That teardown ran before ours, which never ran: the ID is unbound all the same.
    assert current_request_id() is None


def test_a_crash_before_our_before_request_hook_still_has_a_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="gennet_sync"):
        response = hooked_app().test_client().get("/fails-before")
    assert response.status_code == 500
    assert "hunter2" not in response.get_data(as_text=True)
    [record] = [r for r in caplog.records if r.name == "gennet_sync.error_handler"]
    assert record.request_id == response.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert len(response.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("config", [{"DEBUG": True}, {"GENNET_EXPOSE_ERRORS": True}])
def test_debug_or_expose_errors_puts_details_in_metadata(config: dict[str, Any]) -> None:
    response = make_app(**config).test_client().get("/crash")
    assert response.status_code == 500
    metadata = error_of(response)["metadata"]
    assert metadata["exception_type"] == "RuntimeError"
    assert "hunter2" in metadata["exception_message"]
    assert any("secret" in line or "crash" in line for line in metadata["traceback"])


def test_an_exception_whose_str_fails_is_still_exposed_as_an_envelope() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no text")

    app = make_app(GENNET_EXPOSE_ERRORS=True)

    @app.get("/unprintable")
    def unprintable() -> str:
        raise Unprintable

    response = app.test_client().get("/unprintable")
    assert response.status_code == 500
    metadata = error_of(response)["metadata"]
    assert metadata["exception_type"].endswith("Unprintable")
    assert isinstance(metadata["exception_message"], str)


def test_expose_errors_false_wins_over_debug() -> None:
    response = make_app(DEBUG=True, GENNET_EXPOSE_ERRORS=False).test_client().get("/crash")
    assert error_of(response)["metadata"] == {}


@pytest.mark.parametrize(
    "incoming",
    ["a" * 129, "has space", "semi;colon", "é", "", "x" * 8000],
    ids=["too-long", "space", "semicolon", "non-ascii", "empty", "huge"],
)
def test_insane_request_ids_are_replaced(client: Any, incoming: str) -> None:
    response = client.get("/request-id", headers={"X-Request-ID": incoming})
    assert response.status_code == 200
    assigned = response.headers["X-Request-ID"]
    assert assigned != incoming
    assert len(assigned) == 32
    assert response.get_json() == {"context": assigned, "g": assigned}


def test_sane_request_id_is_kept_and_visible_to_the_view(client: Any) -> None:
    incoming = "trace-01.ABC_def-" + "9" * 111
    assert len(incoming) == 128
    response = client.get("/request-id", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming
    assert response.get_json() == {"context": incoming, "g": incoming}
    # Outside the request the ID is gone again.
    assert current_request_id() is None


def test_error_responses_carry_a_request_id_too(client: Any) -> None:
    for path in ("/networks/x", "/crash", "/no/such/route"):
        assert len(client.get(path).headers["X-Request-ID"]) == 32


def test_extension_supports_the_app_factory_pattern_and_keeps_state_per_app() -> None:
    gennet = GenNet()
    apps = [Flask(f"app{i}") for i in range(2)]
    for app in apps:
        app.config["GENNET_REQUEST_ID_HEADER"] = "X-Correlation-ID"
        gennet.init_app(app)
        gennet.init_app(app)  # twice is harmless

        @app.get("/gone")
        def gone() -> str:
            raise NotFoundError("Thing", 1)

    for app in apps:
        state = app.extensions[EXTENSION_KEY]
        assert isinstance(state, AppState) and state.extension is gennet
        assert app_state(app) is state
        response = app.test_client().get("/gone", headers={"X-Correlation-ID": "abc"})
        assert response.status_code == 404
        assert response.headers["X-Correlation-ID"] == "abc"


def test_app_state_sets_the_extension_up_when_missing() -> None:
    app = Flask("bare")
    state = app_state(app)
    assert app.test_client().get("/nothing").get_json()["error"]["code"] == "NOT_FOUND"
    assert app_state(app) is state


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=st.text(min_size=1, max_size=40),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    exc_type=st.sampled_from([RuntimeError, ValueError, KeyError, OSError, ZeroDivisionError]),
)
def test_any_crash_in_production_is_a_valid_envelope_without_its_text(
    secret: str, metadata: dict[str, str], exc_type: type[Exception]
) -> None:
    marker = "LEAK-" + secret
    app = Flask("prop")
    setup_error_handlers(app)
    logging.getLogger("gennet_sync.error_handler").disabled = True

    @app.get("/boom")
    def boom() -> str:
        error = exc_type(marker)
        error.metadata = metadata  # type: ignore[attr-defined]
        raise error

    try:
        response = app.test_client().get("/boom")
    finally:
        logging.getLogger("gennet_sync.error_handler").disabled = False
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    body = json.loads(text)
    assert body["error"]["code"] == "INTERNAL_SERVER_ERROR"
    assert body["error"]["metadata"] == {}
    assert marker not in text
    assert json.dumps(marker)[1:-1] not in text
    assert exc_type.__name__ not in text


def test_a_werkzeug_error_has_one_content_type_ours(client: Any) -> None:
    # werkzeug's own headers say text/html; only the JSON one may reach the client.
    for response in (client.delete("/networks/abc"), client.get("/teapot")):
        assert response.headers.getlist("Content-Type") == ["application/json"]


def test_silent_get_json_of_deeply_nested_json_is_none_as_for_any_bad_json() -> None:
    app = make_app(MAX_CONTENT_LENGTH=None)

    @app.post("/lenient")
    def lenient() -> dict[str, bool]:
        return {"parsed": request.get_json(silent=True) is not None}

    client = app.test_client()
    depth = 100_000
    nested = client.post(
        "/lenient", data=b"[" * depth + b"]" * depth, content_type="application/json"
    )
    assert (nested.status_code, nested.get_json()) == (200, {"parsed": False})
    fine = client.post("/lenient", json=[[1]])
    assert fine.get_json() == {"parsed": True}


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (GenNetException("store down"), True),
        (ServiceUnavailableError("store down"), True),
        (NotFoundError("Network", "x"), False),
        (RateLimitError(), False),
    ],
    ids=["500", "503", "404", "429"],
)
def test_our_5xx_errors_are_logged_with_the_request_id_and_4xx_are_not(
    error: GenNetException, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.get("/raise")
    def raise_it() -> str:
        raise error

    with caplog.at_level(logging.INFO, logger="gennet_sync"):
        response = app.test_client().get("/raise", headers={"X-Request-ID": "req-5xx"})
    assert response.status_code == error.status_code
    records = [r for r in caplog.records if r.name == "gennet_sync.error_handler"]
    if logged:
        [record] = records
        assert record.levelno == logging.ERROR
        assert "store down" in record.getMessage()
        assert record.request_id == "req-5xx"  # type: ignore[attr-defined]
    else:
        assert records == []


def test_an_error_handler_that_raises_a_marshmallow_error_gets_the_422_envelope() -> None:
    app = make_app()

    @app.errorhandler(KeyError)
    def missing_field(error: KeyError) -> str:
        raise marshmallow.ValidationError("Missing data for required field.", error.args[0])

    @app.get("/lookup")
    def lookup() -> str:
        raise KeyError("name")

    response = app.test_client().get("/lookup")
    assert response.status_code == 422
    assert error_of(response)["metadata"] == {
        "fields": {"name": ["Missing data for required field."]}
    }


@pytest.mark.parametrize(("status", "logged"), [(500, True), (503, True), (404, False)])
def test_werkzeug_5xx_errors_are_logged_with_the_request_id_and_4xx_are_not(
    status: int, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.get("/abort")
    def abort_it() -> str:
        abort(status)

    with caplog.at_level(logging.INFO, logger="gennet_sync"):
        response = app.test_client().get("/abort", headers={"X-Request-ID": "req-abort"})
    assert response.status_code == status
    records = [r for r in caplog.records if r.name == "gennet_sync.error_handler"]
    if logged:
        [record] = records
        assert f"HTTP {status}" in record.getMessage()
        assert record.request_id == "req-abort"  # type: ignore[attr-defined]
    else:
        assert records == []


def test_a_request_id_header_set_by_the_view_is_replaced_not_doubled() -> None:
    app = make_app()

    @app.get("/own-id")
    def own_id() -> tuple[str, int, dict[str, str]]:
        return "ok", 200, {"X-Request-ID": "made-up-by-the-view"}

    response = app.test_client().get("/own-id", headers={"X-Request-ID": "req-1"})
    assert response.headers.getlist("X-Request-ID") == ["req-1"]


def test_a_422_lists_the_first_field_errors_and_counts_the_rest() -> None:
    class EdgeSchema(marshmallow.Schema):
        sign = marshmallow.fields.Integer(required=True)

    class GraphSchema(marshmallow.Schema):
        edges = marshmallow.fields.List(marshmallow.fields.Nested(EdgeSchema))
        name = marshmallow.fields.String(required=True)

    app = make_app(MAX_CONTENT_LENGTH=None)

    @app.post("/graphs")
    def graphs() -> dict[str, Any]:
        loaded: dict[str, Any] = GraphSchema().load(request.get_json())
        return loaded

    # 60 bad edges (one nested entry each) and a missing name: 61 problems.
    body = {"edges": [{"sign": "x"} for _ in range(60)]}
    error = error_of(app.test_client().post("/graphs", json=body))
    fields = error["metadata"]["fields"]
    assert sorted(fields["edges"], key=int) == [str(i) for i in range(MAX_FIELD_ERRORS)]
    assert "name" not in fields
    # Left out: 10 edges where the walk stopped, then "name" beside "edges".
    assert error["metadata"]["fields_omitted"] == 11
    assert error["message"] == (
        f"Request validation failed: edges.0.sign: Not a valid integer. (and {60} more)"
    )


def test_a_hand_made_validation_error_nested_without_end_is_still_a_422() -> None:
    nested: Any = ["bottom"]
    deep: Any = {"leaf": ["Bad."]}
    for _ in range(5000):
        nested = [nested]
        deep = {"level": deep}
    app = make_app()

    @app.get("/deep/<kind>")
    def deep_error(kind: str) -> str:
        raise marshmallow.ValidationError({"lists": nested} if kind == "lists" else deep)

    client = app.test_client()
    for kind in ("lists", "mappings"):
        response = client.get(f"/deep/{kind}")
        assert response.status_code == 422, response.data  # was a RecursionError: a 500
        error = error_of(response)
        assert error["message"].startswith("Request validation failed: ")
        assert len(response.data) < 8 * 1024


def test_a_huge_integer_retry_after_is_dropped_and_the_503_stays_a_503() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/down")
    def down() -> str:
        raise ServiceUnavailableError("down", retry_after=10**5000)

    response = app.test_client().get("/down")
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.get_json()["error"]["metadata"] == {}


def test_a_huge_integer_in_metadata_is_rendered_by_its_size() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/states")
    def states() -> str:
        raise GenNetException("too many states", metadata={"states": 2**20000, "ok": 2**64})

    response = app.test_client().get("/states")
    metadata = response.get_json()["error"]["metadata"]
    assert metadata == {"states": "<integer of about 6021 digits>", "ok": 2**64}


def test_request_text_in_an_exception_message_cannot_start_a_log_line() -> None:
    forged = "2026-11-29 12:00:00,000 INFO gennet_sync.auth login ok user=admin"
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/n/<name>")
    def view(name: str) -> str:
        try:
            raise KeyError(name)
        except KeyError as error:
            raise RuntimeError(f"cannot load network {name}") from error

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    package_logger = logging.getLogger("gennet_sync")
    package_logger.addHandler(handler)
    try:
        response = app.test_client().get(f"/n/x%0D%0A{forged.replace(' ', '%20')}")
    finally:
        package_logger.removeHandler(handler)
    assert response.status_code == 500
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if line.startswith(forged)], lines
    # Both exceptions of the chain are in the record, each message on one line.
    assert sum("login ok" in line for line in lines) == 3, lines  # path, KeyError, RuntimeError
    assert any(line.startswith("RuntimeError: cannot load network x\\r\\n2026") for line in lines)
    assert any("The above exception was the direct cause" in line for line in lines)
    assert any(line.startswith('  File "') for line in lines)  # the stack is kept as it is
