"""schemathesis cases for every operation of an app's own OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import schemathesis
from flask import Flask
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from gennet_sync.testing import undocumented_error_codes

__all__ = ["CASE_CHECKS", "operation_cases"]


def operation_cases(
    app: Flask, modes: Iterable[GenerationMode] = tuple(GenerationMode)
) -> st.SearchStrategy[Case[Any]]:
    """Requests to every operation of ``app``'s ``/openapi.json``, valid and invalid.

    Fails when the document has an operation schemathesis cannot read.
    """
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    strategies: list[st.SearchStrategy[Case[Any]]] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        strategies.extend(result.ok().as_strategy(mode) for mode in modes)
    return st.one_of(strategies)


#: What the example services are held to: no undocumented code, no 5xx, and each
#: body (an envelope too) matching the schema its status and code document.
CASE_CHECKS: list[Any] = [
    undocumented_error_codes,
    not_a_server_error,
    response_schema_conformance,
]
