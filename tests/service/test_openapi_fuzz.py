"""Property tests from the OpenAPI document: every documented endpoint, fed generated requests,
answers with a documented status, content type and schema, and never a 5xx."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import schemathesis
from hypothesis import HealthCheck, given, settings
from service_helpers import live_server, make_settings

EXAMPLES = 25  # per operation


def test_documented_endpoints_conform(bundle_path: Path) -> None:
    calls: Counter[str] = Counter()
    with live_server(make_settings(bundle_path)) as address:
        schema = schemathesis.openapi.from_url(f"http://{address}/openapi.json")
        operations = [result.ok() for result in cast(Any, schema).get_all_operations()]
        assert len(operations) >= 8
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            def conforms(case: Any) -> None:
                calls[case.operation.label] += 1
                case.call_and_validate()  # includes not_a_server_error: no 5xx

            conforms()
    assert len(calls) == len(operations) and sum(calls.values()) <= 2 * EXAMPLES * len(operations), calls
    print(f"\nschemathesis: {sum(calls.values())} cases over {len(operations)} operations")
