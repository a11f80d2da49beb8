"""The qualitative service: CTL model checking of Boolean networks over HTTP.

``POST /ctl/verify`` takes a Boolean network, a CTL formula and optionally a
partial initial state, and answers whether the formula holds in every initial
state of the network's state transition graph::

    POST /ctl/verify
    {"network": {"nodes": {"x": "!y", "y": "!x"}, "update": "asynchronous"},
     "formula": "AG(x & !y -> AG(x & !y))",
     "initial": {"x": true}}

    200 {"holds": true, "formula": "AG((x & !y) -> AG(x & !y))",
         "update": "asynchronous", "nodes": ["x", "y"], "states": 2,
         "initial_states": 2, "satisfying_initial_states": 2}

When the formula fails the answer has a ``counterexample``, and when an
existential formula holds a ``witness``, where one is cheap to give (see
:meth:`examples.ctl.ModelChecker.explain`): a path of states written as
``{"node": bool}``, with ``loop_start`` when it ends in a cycle.

Nodes left out of ``initial`` take both values; without ``initial`` every
state is initial.  A rule or formula that does not parse, an unknown node, a
node named like a temporal operator (``AG``...) or more than 20 nodes is a 422
envelope whose metadata names the ``field``, the ``node`` and the ``position``.
A check that would run longer than ``CTL_TIME_LIMIT`` seconds (default 20) is
stopped: a 422 whose metadata gives the ``time_limit``.  ``GET /health``
answers ``{"status": "ok"}``.

Run it with ``gunicorn 'examples.qualitative_service:create_app()'``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from marshmallow import RAISE, Schema, fields, validate
from marshmallow.types import ErrorMessages

from examples.boolnet import (
    MAX_NODES,
    BooleanNetwork,
    Deadline,
    NetworkError,
    NetworkSizeError,
    TimeLimitError,
    UnknownNodeError,
    UpdateScheme,
)
from examples.ctl import TEMPORAL_OPERATORS, CheckResult, Trace, check
from gennet_sync import OpenAPI, ValidationError, doc, setup_error_handlers
from gennet_sync.console import BreakerConsole
from gennet_sync.health import Health
from gennet_sync.metrics import Metrics

__all__ = ["NetworkSchema", "StrictBoolean", "VerifyRequestSchema", "create_app", "result_to_json"]

SERVICE_NAME = "qualitative-service"

#: A verification request is small; a megabyte is far more than 20 rules need.
DEFAULT_MAX_CONTENT_LENGTH = 1024 * 1024
#: Seconds one check may run (config ``CTL_TIME_LIMIT``) before it is a 422:
#: below the workflow service's read timeout and gunicorn's worker timeout.
DEFAULT_TIME_LIMIT = 20.0


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false``; not ``1``, ``"yes"`` or ``"true"``."""

    default_error_messages: ErrorMessages = {  # noqa: RUF012 (marshmallow merges it per class)
        "invalid": "Not a JSON boolean: use true or false."
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class NetworkSchema(Schema):
    """A Boolean network: an update rule per node and the update scheme."""

    class Meta:
        unknown = RAISE

    nodes = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.String(validate=validate.Length(max=10_000)),
        required=True,
    )
    update = fields.String(
        load_default=UpdateScheme.SYNCHRONOUS.value,
        validate=validate.OneOf([scheme.value for scheme in UpdateScheme]),
    )


class VerifyRequestSchema(Schema):
    """Body of ``POST /ctl/verify``."""

    class Meta:
        unknown = RAISE

    network = fields.Nested(NetworkSchema, required=True)
    formula = fields.String(required=True, validate=validate.Length(max=10_000))
    initial = fields.Dict(keys=fields.String(), values=StrictBoolean(), load_default=None)


def _validation_error(error: NetworkError, field: str) -> ValidationError:
    """The 422 for a network or formula error, with where it was found."""
    metadata: dict[str, Any] = {}
    if error.node is not None:
        metadata["node"] = error.node
    if isinstance(error, UnknownNodeError):
        metadata["unknown_node"] = error.unknown
    if error.position is not None:
        metadata["position"] = error.position
    if error.text is not None:
        metadata["text"] = error.text
    return ValidationError(error.message, field=field, metadata=metadata)


def _build_network(nodes: Mapping[str, str], update: str) -> BooleanNetwork:
    for name in nodes:
        if name in TEMPORAL_OPERATORS:
            raise ValidationError(
                f"'{name}' is a CTL temporal operator and cannot name a node: "
                "a formula could not refer to it",
                field=f"network.nodes.{name}",
                metadata={"node": name},
            )
    try:
        return BooleanNetwork(nodes, update=update)
    except NetworkSizeError as error:
        raise ValidationError(
            error.message, field="network.nodes", metadata={"max_nodes": MAX_NODES}
        ) from error
    except NetworkError as error:
        field = "network.nodes" if error.node is None else f"network.nodes.{error.node}"
        raise _validation_error(error, field) from error


def _trace_to_json(network: BooleanNetwork, trace: Trace) -> dict[str, Any]:
    return {
        "description": trace.description,
        "path": [network.decode(state) for state in trace.path],
        "loop_start": trace.loop_start,
        "truncated": trace.truncated,
    }


def result_to_json(network: BooleanNetwork, result: CheckResult) -> dict[str, Any]:
    """The response body for ``result``."""
    body: dict[str, Any] = {
        "holds": result.holds,
        "formula": str(result.formula),
        "update": network.update.value,
        "nodes": list(network.nodes),
        "states": result.states,
        "initial_states": result.initial_states,
        "satisfying_initial_states": result.satisfying_initial_states,
    }
    if result.trace is not None:
        body[result.trace.kind] = _trace_to_json(network, result.trace)
    return body


@doc(body=VerifyRequestSchema, errors=[ValidationError], tags=["ctl"])
def verify() -> Response:
    """Model-check a CTL formula on a Boolean network.

    A formula or rule that does not parse, an unknown node, more than 20 nodes or
    a check longer than the time limit is a 422 whose metadata says where.
    """
    data = VerifyRequestSchema().load(request.get_json())
    network = _build_network(data["network"]["nodes"], data["network"]["update"])
    initial = data["initial"] or {}
    for name in initial:
        if name not in network.index:
            raise ValidationError(
                f"Unknown node '{name}' in the initial state",
                field="initial",
                metadata={"unknown_node": name},
            )
    config = current_app.config
    deadline = Deadline(config["CTL_TIME_LIMIT"], config["CTL_CLOCK"])
    try:
        result = check(network, data["formula"], initial, deadline=deadline)
    except TimeLimitError as error:
        raise ValidationError(
            error.message, field="formula", metadata={"time_limit": error.seconds}
        ) from error
    except NetworkError as error:
        raise _validation_error(error, "formula") from error
    return jsonify(result_to_json(network, result))


@doc(tags=["health"])
def health() -> Response:
    """Report that the service is up."""
    return jsonify({"status": "ok", "service": SERVICE_NAME})


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The qualitative service's Flask app.

    Example::

        app = create_app({"TESTING": True})
        app.test_client().post("/ctl/verify", json={
            "network": {"nodes": {"a": "!a"}}, "formula": "AG(a -> AX !a)"})

    Args:
        config: Flask configuration to apply over the defaults; ``CTL_TIME_LIMIT``
            is the seconds a check may take (``None``: no limit; default: the
            environment variable of that name, else 20), ``CTL_CLOCK`` the
            monotonic clock it is measured with.

    Returns:
        The app, with the gennet_sync error envelope on every error, ``/docs``
        and ``/errors``.

    Raises:
        ValueError: ``CTL_TIME_LIMIT`` is not a number of seconds >= 0.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = DEFAULT_MAX_CONTENT_LENGTH
    app.config["CTL_CLOCK"] = time.monotonic
    app.config["CTL_TIME_LIMIT"] = os.environ.get("CTL_TIME_LIMIT", DEFAULT_TIME_LIMIT)
    if config:
        app.config.update(config)
    limit = app.config["CTL_TIME_LIMIT"]
    # A number given as text (from the environment, say) is fine; a bad one
    # fails here, at start-up, rather than on every request.
    app.config["CTL_TIME_LIMIT"] = Deadline(None if limit is None else float(limit)).seconds
    setup_error_handlers(app)
    Metrics(app)  # GET /metrics
    app.add_url_rule("/ctl/verify", view_func=verify, methods=["POST"])
    app.add_url_rule("/health", view_func=health, methods=["GET"])
    Health(app)
    BreakerConsole(app)
    OpenAPI(app, title="Qualitative service", version="1.0.0")
    return app
