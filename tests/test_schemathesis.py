"""schemathesis against the running service's own `/openapi.json`: every operation,
generated valid and invalid requests, an admin key. Every answer must match the
document (status codes, JSON bodies, headers) and none may be a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from auth_helpers import ADMIN, write_keys_file
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from test_client import start_service, stop


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`imgdedup serve` (in-memory index, auth on): (base URL, admin token)."""
    keys: Path = tmp_path_factory.mktemp("schemathesis") / "api-keys.json"
    tokens = write_keys_file(keys, ADMIN)
    process, base = start_service(keys)
    yield base, tokens[ADMIN[0]]
    stop(process)


#: The document the service serves (the test checks it is the same one).
SPEC = Path(__file__).resolve().parent.parent / "src/imgdedup/adapters/openapi.json"
SCHEMA = schemathesis.openapi.from_path(SPEC)
IMAGE_BODY_OPERATIONS = {"POST /v1/namespaces/{ns}/check", "POST /v1/namespaces/{ns}/images/{image_id}"}
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


def test_the_served_document_is_the_one_tested(served: tuple[str, str]) -> None:
    assert httpx.get(f"{served[0]}/openapi.json").json() == json.loads(SPEC.read_text())


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_every_operation_conforms_to_the_document(label: str, served: tuple[str, str]) -> None:
    base, token = served
    operation = OPERATIONS[label]
    # A schema cannot say "bytes that decode as an image": generated bodies are schema-valid
    # but refused as `undecodable_image`, so "valid data is accepted" does not apply to image
    # bodies. Every other check (status codes, bodies, headers, no 500) still does.
    excluded = [positive_data_acceptance] if label in IMAGE_BODY_OPERATIONS else []

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded
        )

    conforms()
