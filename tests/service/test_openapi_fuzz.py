"""Property tests from the OpenAPI document: every documented endpoint, fed generated requests,
answers with a documented status, content type and schema, and never a 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import schemathesis
from hypothesis import HealthCheck, given, settings
from service_helpers import live_server, make_settings


def test_documented_endpoints_conform(bundle_path: Path) -> None:
    with live_server(make_settings(bundle_path)) as address:
        schema = schemathesis.openapi.from_url(f"http://{address}/openapi.json")
        operations = [result.ok() for result in cast(Any, schema).get_all_operations()]
        assert len(operations) >= 8
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def conforms(case: Any) -> None:
                case.call_and_validate()

            conforms()
