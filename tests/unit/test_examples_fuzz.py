"""Generated bad input against the example services: never a 5xx, always the envelope.

The GRN service is driven by schemathesis from its own ``/openapi.json``:
valid and invalid bodies, path and query parameters for every documented
operation, plus undocumented methods.  The qualitative service (which has no
OpenAPI document) gets hypothesis-generated bodies: well-formed requests built
from random tokens, and arbitrary JSON.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from examples.grn_service import create_app as create_grn_app
from examples.qualitative_service import create_app as create_qualitative_app

_CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def assert_answer_is_not_a_server_error(
    status: int, content_type: str | None, body: Any, method: str
) -> None:
    """A 2xx, or a 4xx envelope saying what was wrong; never a 5xx."""
    assert status < 500, body
    if status < 400 or method == "HEAD":
        return
    assert content_type == "application/json"
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "type", "message", "metadata"}
    assert _CODE.match(error["code"])
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    assert isinstance(error["metadata"], dict)


# ------------------------------------------------------------------ GRN service


@pytest.fixture(scope="module")
def grn_cases(tmp_path_factory: pytest.TempPathFactory) -> st.SearchStrategy[Case[Any]]:
    """Valid and invalid requests to every operation of the GRN service's OpenAPI document."""
    database = tmp_path_factory.mktemp("fuzz") / "grn.sqlite3"
    app = create_grn_app({"TESTING": True, "DATABASE": str(database)})
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    strategies: list[st.SearchStrategy[Case[Any]]] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        strategies.extend(result.ok().as_strategy(mode) for mode in GenerationMode)
    assert len(strategies) >= 12
    return st.one_of(strategies)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_grn_service_answers_generated_requests_with_2xx_or_an_envelope(
    grn_cases: st.SearchStrategy[Case[Any]], data: st.DataObject
) -> None:
    case = data.draw(grn_cases)
    # identity: the WSGI transport would not decode a compressed answer.
    response = case.call(headers={"Accept-Encoding": "identity"})
    content_type = response.headers.get("content-type", [None])[0]
    body = response.json() if content_type == "application/json" and response.content else None
    assert_answer_is_not_a_server_error(response.status_code, content_type, body, case.method)


# Text as JSON can carry it: lone surrogates and NUL included (st.text leaves them out).
_odd_text = st.lists(
    st.characters() | st.sampled_from(["\ud800", "\udfff", "\x00", "a"]), max_size=6
).map("".join)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _odd_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_odd_text, children, max_size=4)
    ),
    max_leaves=12,
)
_edges = st.lists(
    st.fixed_dictionaries(
        {"source": _odd_text, "target": _odd_text, "sign": st.sampled_from([1, -1, 0, 2, True])}
    )
    | _json,
    max_size=3,
)
_names = st.lists(
    st.characters() | st.sampled_from(["\ud800", "\udfff", "\x00"]), min_size=1, max_size=6
).map("".join)
_network_bodies = st.fixed_dictionaries(
    {"name": _names, "nodes": st.lists(_names, min_size=1, max_size=4, unique=True)},
    optional={"edges": _edges},
)
_cursors = st.one_of(
    _odd_text,
    st.builds(
        lambda text: base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode(),
        st.builds("seq:{}".format, st.integers(min_value=-1, max_value=2**80) | _odd_text),
    ),
)


@pytest.fixture(scope="module")
def grn_client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    database = tmp_path_factory.mktemp("fuzz") / "grn.sqlite3"
    return create_grn_app({"TESTING": True, "DATABASE": str(database)}).test_client()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_network_bodies | _json, cursor=_cursors, network_id=_odd_text)
def test_grn_service_answers_odd_text_and_forged_cursors_with_2xx_or_an_envelope(
    grn_client: FlaskClient, body: Any, cursor: str, network_id: str
) -> None:
    def url_quoted(text: str) -> str:  # a lone surrogate becomes invalid UTF-8 bytes
        return quote(text.encode("utf-8", "surrogatepass"), safe="")

    requests = [
        ("POST", grn_client.post("/api/v2/networks", json=body)),
        ("GET", grn_client.get(f"/api/v2/networks?cursor={url_quoted(cursor)}")),
        ("GET", grn_client.get(f"/api/v2/networks/{url_quoted(network_id)}")),
    ]
    for method, response in requests:
        payload = response.get_json(silent=True)
        assert_answer_is_not_a_server_error(
            response.status_code, response.content_type, payload, method
        )


# ---------------------------------------------------------- qualitative service

_NAMES = ("a", "b", "c", "A", "E", "U", "AG", "x.y", "_z", "and", "1a", "é", "a\x00")
_TOKENS = (
    *_NAMES,
    "!", "not", "&", "and", "|", "or", "->", "(", ")", "[", "]", "true", "false",
    "AX", "EX", "AF", "EF", "AG", "EG", "A[", "E[", " U ", "^", "<->", "\ud800", "",
)  # fmt: skip

_texts = st.lists(st.sampled_from(_TOKENS), max_size=12).map(" ".join)
_verify_bodies = st.fixed_dictionaries(
    {
        "network": st.fixed_dictionaries(
            {"nodes": st.dictionaries(st.sampled_from(_NAMES[:5]), _texts, max_size=4)},
            optional={"update": st.sampled_from(["synchronous", "asynchronous", "random", 1])},
        ),
        "formula": _texts,
    },
    optional={
        "initial": st.dictionaries(st.sampled_from(_NAMES[:6]), st.booleans() | _json, max_size=3)
    },
)


@pytest.fixture(scope="module")
def qualitative_client() -> FlaskClient:
    return create_qualitative_app({"TESTING": True}).test_client()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_verify_bodies | _json)
def test_qualitative_service_answers_any_body_with_2xx_or_an_envelope(
    qualitative_client: FlaskClient, body: Any
) -> None:
    response = qualitative_client.post("/ctl/verify", json=body)
    payload = response.get_json(silent=True)
    assert_answer_is_not_a_server_error(
        response.status_code, response.content_type, payload, "POST"
    )
    if response.status_code == 200:
        assert isinstance(payload, dict)
        assert isinstance(payload["holds"], bool)
