"""The qualitative service: POST /ctl/verify answers and its 422 envelopes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from flask.testing import FlaskClient

from examples.qualitative_service import create_app
from tests.support.qualitative import OSCILLATOR, verify

TOGGLE = {"nodes": {"x": "!y", "y": "!x"}, "update": "asynchronous"}


@pytest.fixture
def client() -> FlaskClient:
    return create_app({"TESTING": True}).test_client()


def test_health(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "qualitative-service"}


def test_fixed_point_of_the_toggle_switch_is_stable(client: FlaskClient) -> None:
    status, body = verify(
        client, {"network": TOGGLE, "formula": "AG(x & !y -> AG(x & !y))", "initial": {"x": True}}
    )
    assert status == 200
    assert body["holds"] is True
    # initial: 10 and 11; 11 also reaches 01
    assert body["initial_states"] == 2
    assert body["states"] == 3
    assert body["nodes"] == ["x", "y"]
    assert body["update"] == "asynchronous"
    assert "counterexample" not in body


def test_failing_af_comes_with_a_lasso_counterexample(client: FlaskClient) -> None:
    status, body = verify(
        client, {"network": TOGGLE, "formula": "AF(x & !y)", "initial": {"x": False, "y": False}}
    )
    assert status == 200
    assert body["holds"] is False
    assert body["counterexample"]["path"] == [{"x": False, "y": False}, {"x": False, "y": True}]
    assert body["counterexample"]["loop_start"] == 1
    assert body["counterexample"]["truncated"] is False
    assert set(body["counterexample"]) == {"description", "path", "loop_start", "truncated"}
    assert body["satisfying_initial_states"] == 0


def test_ef_witness_path_on_the_oscillator(client: FlaskClient) -> None:
    status, body = verify(
        client,
        {"network": OSCILLATOR, "formula": "EF(!a & b)", "initial": {"a": False, "b": False}},
    )
    assert status == 200
    assert body["holds"] is True
    assert body["witness"]["path"] == [
        {"a": False, "b": False},
        {"a": True, "b": False},
        {"a": True, "b": True},
        {"a": False, "b": True},
    ]


def test_update_defaults_to_synchronous(client: FlaskClient) -> None:
    # synchronous toggle from 00 goes to 11 and back: EF(x & y) holds; asynchronously it cannot
    network = {"nodes": TOGGLE["nodes"]}
    _, sync = verify(
        client, {"network": network, "formula": "EF(x & y)", "initial": {"x": False, "y": False}}
    )
    assert sync["update"] == "synchronous"
    assert sync["holds"] is True
    _, asynchronous = verify(
        client, {"network": TOGGLE, "formula": "EF(x & y)", "initial": {"x": False, "y": False}}
    )
    assert asynchronous["holds"] is False


def error_of(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    status, payload = verify(client, body)
    assert status == 422
    assert payload["error"]["code"] == "VALIDATION_ERROR"
    assert payload["error"]["type"] == "ValidationError"
    error = payload["error"]
    assert isinstance(error, dict)
    return error


def test_rule_syntax_error_names_the_node_and_position(client: FlaskClient) -> None:
    error = error_of(client, {"network": {"nodes": {"x": "!y", "y": "x and (y"}}, "formula": "x"})
    assert error["metadata"]["field"] == "network.nodes.y"
    assert error["metadata"]["node"] == "y"
    assert error["metadata"]["position"] == 8
    assert "position 8" in error["message"]


def test_unknown_node_in_a_rule(client: FlaskClient) -> None:
    error = error_of(client, {"network": {"nodes": {"x": "!ghost"}}, "formula": "x"})
    assert error["metadata"]["unknown_node"] == "ghost"
    assert error["metadata"]["position"] == 1
    assert "ghost" in error["message"]


def test_formula_syntax_error_gives_the_position(client: FlaskClient) -> None:
    error = error_of(client, {"network": TOGGLE, "formula": "E[x U y"})
    assert error["metadata"]["field"] == "formula"
    assert error["metadata"]["position"] == 7


def test_unknown_node_in_the_formula(client: FlaskClient) -> None:
    error = error_of(client, {"network": TOGGLE, "formula": "AG(x -> EF zz)"})
    assert error["metadata"] == {
        "field": "formula",
        "unknown_node": "zz",
        "position": 11,
        "text": "AG(x -> EF zz)",
    }


def test_unknown_node_in_the_initial_state(client: FlaskClient) -> None:
    error = error_of(client, {"network": TOGGLE, "formula": "x", "initial": {"w": True}})
    assert error["metadata"] == {"field": "initial", "unknown_node": "w"}


def test_more_than_twenty_nodes(client: FlaskClient) -> None:
    nodes = {f"n{i}": "true" for i in range(21)}
    error = error_of(client, {"network": {"nodes": nodes}, "formula": "n0"})
    assert error["metadata"] == {"field": "network.nodes", "max_nodes": 20}


def test_schema_errors_are_per_field(client: FlaskClient) -> None:
    error = error_of(client, {"network": {"nodes": {}, "update": "sideways"}, "extra": 1})
    fields = error["metadata"]["fields"]
    assert set(fields) == {"formula", "extra", "network"}
    assert "update" in fields["network"]


def test_body_that_is_not_json_is_an_envelope(client: FlaskClient) -> None:
    response = client.post("/ctl/verify", data="{", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "BAD_REQUEST"


def test_wrong_method_is_an_envelope(client: FlaskClient) -> None:
    response = client.get("/ctl/verify")
    assert response.status_code == 405
    assert response.headers["Allow"] is not None
    assert response.get_json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_absurdly_nested_input_is_a_422_not_a_500(client: FlaskClient) -> None:
    deep_rule = error_of(client, {"network": {"nodes": {"a": "!" * 5000 + "a"}}, "formula": "a"})
    assert deep_rule["metadata"]["field"] == "network.nodes.a"
    deep_formula = error_of(client, {"network": TOGGLE, "formula": "EF " * 3000 + "x"})
    assert deep_formula["metadata"]["field"] == "formula"
    assert deep_formula["metadata"]["position"] == 192


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "on"])
def test_initial_values_must_be_json_booleans(client: FlaskClient, value: object) -> None:
    # "yes" or 1 for a node's value is a client bug worth reporting, not a guess.
    status, body = verify(client, {"network": TOGGLE, "formula": "x", "initial": {"x": value}})
    assert status == 422
    assert body["error"]["metadata"]["fields"] == {
        "initial": {"x": {"value": ["Not a JSON boolean: use true or false."]}}
    }


def test_a_check_past_its_time_limit_is_a_422() -> None:
    ticks = itertools.count(1.0)  # the clock moves a second per reading
    config = {"TESTING": True, "CTL_TIME_LIMIT": 2.5, "CTL_CLOCK": lambda: next(ticks)}
    client = create_app(config).test_client()
    network = {"nodes": {f"n{i}": f"!n{(i + 1) % 12}" for i in range(12)}, "update": "asynchronous"}
    status, body = verify(client, {"network": network, "formula": "EG EG EG EG n0"})
    assert status == 422
    error = body["error"]
    assert error["metadata"] == {"field": "formula", "time_limit": 2.5}
    assert "time limit of 2.5 s" in error["message"]

    unlimited = create_app({"TESTING": True, "CTL_TIME_LIMIT": None}).test_client()
    status, body = verify(unlimited, {"network": network, "formula": "EG EG EG EG n0"})
    assert status == 200


def test_time_limit_setting_is_checked_at_start_up() -> None:
    assert create_app({"CTL_TIME_LIMIT": "2.5"}).config["CTL_TIME_LIMIT"] == 2.5
    for bad in ("soon", -1):
        with pytest.raises(ValueError, match=r"time limit|could not convert"):
            create_app({"CTL_TIME_LIMIT": bad})


def test_a_node_named_like_a_temporal_operator_is_refused(client: FlaskClient) -> None:
    # A formula could never name it: "AG" always starts a temporal formula.
    network = {"nodes": {"AG": "x", "x": "AG"}}
    status, body = verify(client, {"network": network, "formula": "AG & x"})
    assert status == 422
    error = body["error"]
    assert error["metadata"] == {"field": "network.nodes.AG", "node": "AG"}
    assert "temporal operator" in error["message"]


def test_time_limit_comes_from_the_environment_unless_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTL_TIME_LIMIT", "7")
    assert create_app().config["CTL_TIME_LIMIT"] == 7.0
    assert create_app({"CTL_TIME_LIMIT": None}).config["CTL_TIME_LIMIT"] is None
    monkeypatch.delenv("CTL_TIME_LIMIT")
    assert create_app().config["CTL_TIME_LIMIT"] == 20.0


def test_a_formula_over_10000_characters_is_a_422_on_formula(client: FlaskClient) -> None:
    status, _ = verify(client, {"network": OSCILLATOR, "formula": "a" + " " * 9_999})
    assert status == 200
    status, body = verify(client, {"network": OSCILLATOR, "formula": "a" + " " * 10_000})
    assert status == 422
    assert body["error"]["metadata"]["fields"] == {"formula": ["Longer than maximum length 10000."]}
