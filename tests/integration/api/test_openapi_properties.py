"""The OpenAPI document is a true contract: schemathesis generates requests for every
operation of /openapi.json (valid ones and, as many, invalid ones: a missing key, a
wrong type, a broken pattern) and sends them to a real server on 127.0.0.1 with
/process on (a real database) and an API key. No answer may be a 500, every answer must
be one the document lists for its operation, of its media type and schema, and an
invalid request must be refused. Deterministic: the same requests every run.

Below it, one regression test per mismatch it found."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.api.process_support import AUTH, process_server, submit
from tests.integration.api.support import ApiServer

pytestmark = pytest.mark.slow

EXAMPLES = 20
"""Per operation and generation mode: about 40 s for the API's operations on 2 cores."""
SEED = 16
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
KEY = {"Authorization": AUTH["Authorization"]}


@pytest.fixture
def served(dsn: str, tmp_path: Path) -> Iterator[ApiServer]:
    """/process on: a database, a media dir, an (empty) path root, host 127.0.0.1."""
    root = tmp_path / "photos"
    root.mkdir()
    server = process_server(dsn, tmp_path / "media", tmp_path / "server.log", roots=(root,))
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()


def document(server: ApiServer) -> Any:
    answer = server.request("GET", "/openapi.json", headers=KEY, timeout=30)
    assert answer.status == 200, answer.body
    return answer.json()


def exercise(
    operation: Any, mode: GenerationMode, answered: Counter[tuple[str, GenerationMode, int]]
) -> None:
    """EXAMPLES requests of ``mode`` to ``operation``, each answer checked; the first
    failure (shrunk to its simplest request) is raised."""

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=KEY, checks=CHECKS, timeout=60)
        answered[operation.label, mode, response.status_code] += 1

    answers()


def test_every_operation_answers_as_its_document_says(served: ApiServer) -> None:
    config = schemathesis.Config.from_dict(
        {"seed": SEED, "base-url": f"http://127.0.0.1:{served.port}"}
    )
    schema = schemathesis.openapi.from_dict(document(served), config=config)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results  # a sound document
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    failures: list[str] = []
    answered: Counter[tuple[str, GenerationMode, int]] = Counter()
    for operation in operations:
        for mode in GenerationMode:
            try:
                exercise(operation, mode, answered)
            except Unsatisfiable:
                # nothing to make invalid: no parameter, no body (the health routes)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode}): {exc}")
    print(*sorted(answered.items()), sep="\n")  # shown when it fails
    assert not failures, "\n\n".join(failures)
    assert {label for label, _, _ in answered} == {op.label for op in operations}
    assert {"POST /detect", "POST /process", "GET /process/{job_id}"} <= {
        op.label for op in operations
    }


def test_metrics_documents_the_401_it_answers_without_a_key(served: ApiServer) -> None:
    responses = document(served)["paths"]["/metrics"]["get"]["responses"]
    answer = served.request("GET", "/metrics", timeout=30)
    assert answer.status == 401
    schema = responses["401"]["content"]["application/json"]["schema"]
    body_schema = {**schema, "components": document(served)["components"]}
    jsonschema.Draft202012Validator(body_schema).validate(answer.json())


SOURCES: list[tuple[dict[str, str | None], bool]] = [
    ({}, False),
    ({"media_url": None, "path": None}, False),
    ({"media_url": "http://example.invalid/a.jpg", "path": "/photos/a.jpg"}, False),
    ({"media_url": "http://example.invalid/a.jpg"}, True),
    ({"path": "/elsewhere/a.jpg", "media_url": None}, True),
]


def test_the_document_says_a_job_names_exactly_one_of_media_url_and_path(
    served: ApiServer,
) -> None:
    """The server refuses anything but exactly one source with 400; the document says so
    too, so a client built from it cannot send a job the server refuses as malformed."""
    components = document(served)["components"]
    schema = {"$ref": "#/components/schemas/ProcessRequest", "components": components}
    for sources, valid in SOURCES:
        job = {"job_id": "one-source", "media_id": "m-1", **sources}
        assert jsonschema.Draft202012Validator(schema).is_valid(job) is valid, job
        answer = submit(served, job)
        # a valid job's media is refused here (host not allowed, path beneath no root)
        assert answer.status == (403 if valid else 400), (job, answer.body)
