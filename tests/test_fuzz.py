"""Property-based fuzzing of the running service against its own /openapi.json (schemathesis).

Every generated request, valid or deliberately invalid, and every undeclared method on a documented
path, must get a documented status code, no 5xx, and a body that matches the documented schema with
the documented content type; valid requests must be accepted, invalid ones refused, and a 405 must
name the allowed methods. All of schemathesis' phases run: the schema's examples, coverage (boundary
values, undeclared methods, missing parts) and fuzzing in positive and negative modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import BaseSchema, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.pytest.lazy import get_all_tests

from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Bounded and deterministic: the same examples on every run (about 15 s in all).
FUZZ_SETTINGS = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

DIMENSION = 384  # the debug model's
# The fuzzed server's prompts, so that `prompt_name` and `input_type` have prompts to select.
PROMPTS = {"query": "query: ", "passage": "passage: "}
INPUT_TYPES = {"query": "query", "document": "passage", "passage": "passage"}


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    prompts = [arg for name, text in PROMPTS.items() for arg in ("--prompt", f"{name}={text}")]
    with ServerProcess(args=["--log-level", "warning", *prompts]) as server:
        yield server
        log = server.log()
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 300) :][:5000]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess) -> BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    # Invalid data may also be refused as too large (over --max-body-size: 2049 texts of 1024
    # characters), a documented 413 that schemathesis does not count as a rejection by default.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


def valid_by_the_prose(case: schemathesis.Case[Any]) -> bool:
    """Rules the documentation states in words because a static JSON Schema cannot: `dimensions` is 1
    up to the served model's dimension ("else 400" on /v1/embeddings, "else 422" on TEI's body);
    `prompt_name` names one of the model's prompts, and with `input_type` the same one ("else 400");
    on TEI's body a compact `encoding_format` needs `normalize: true` ("else 422").
    A schema-valid case outside them is not valid data, so it is not sent as such."""
    body = case.body if isinstance(case.body, dict) else {}
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return True
    dimensions = body.get("dimensions")
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if not positive:
        return True
    with_dimensions = case.operation.path in ("/v1/embeddings", "/embed", "/") and isinstance(dimensions, int)
    if with_dimensions and not 1 <= dimensions <= DIMENSION:
        return False
    prompt_name, input_type = body.get("prompt_name"), body.get("input_type")
    if isinstance(prompt_name, str) and prompt_name not in PROMPTS:
        return False
    compact = body.get("encoding_format") not in (None, "float", "base64")
    if "inputs" in body and compact and body.get("normalize") is False:
        return False  # TEI's body: the compact formats quantize unit vectors ("needs normalize: true")
    return not (
        isinstance(prompt_name, str)
        and isinstance(input_type, str)
        and INPUT_TYPES.get(input_type) != prompt_name
    )


# schemathesis' `from_fixture(...).parametrize()` fails on pytest 9 (it sets the removed
# `Function._nodeid`); `get_all_tests` builds the same per-operation tests, run here one by one.
def test_every_documented_operation_conforms(api_schema: BaseSchema) -> None:
    def check(case: schemathesis.Case[Any]) -> None:
        if valid_by_the_prose(case):
            case.call_and_validate(timeout=30)

    failures: dict[str, BaseException] = {}
    tested = set()
    for result in get_all_tests(
        schema=api_schema, test_func=check, settings=FUZZ_SETTINGS, given_kwargs=None
    ):
        assert isinstance(result, Ok), f"the schema does not load: {result.err()}"
        operation, test = result.ok()
        tested.add(operation.label)
        try:
            test()
        except Exception as error:  # keep going: report every operation's failure at once
            failures[operation.label] = error
    assert {"POST /embed", "GET /health", "GET /ready", "POST /v1/embeddings"} <= tested, tested
    assert not failures, "\n\n".join(f"{label}:\n{error}" for label, error in failures.items())
