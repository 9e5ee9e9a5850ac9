"""A schemathesis pass over the OpenAPI schema against a live demo server with small limits: no 5xx, ever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e

SMALL_LIMITS = {
    "AIPC_MAX_TOKENS_LIMIT": "32", "AIPC_CHAT_MAX_TOKENS": "32", "AIPC_IMAGE_MAX_STEPS": "2",
    "AIPC_IMAGE_MAX_SIZE": "128", "AIPC_IMAGE_MAX_N": "2", "AIPC_CHAT_RATE_PER_MINUTE": "100000",
    "AIPC_REQUEST_TIMEOUT": "30", "AIPC_REASONING_BUDGET": "8",
}


@pytest.fixture(scope="module")
def fuzz_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("fuzz")
    server = start_server(demo_models.parent, root / "data", root / "server.log", env=SMALL_LIMITS)
    yield server
    server.stop()


def test_no_server_errors(fuzz_server: LiveServer) -> None:
    api = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    failures: list[str] = []
    calls: list[int] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=fuzz_server.base_url, timeout=60)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r:.200} -> "
                                f"{response.status_code}: {response.text[:300]}")

        check()
    assert not failures, "\n".join(failures[:10])
    assert len(calls) > 10 * len(operations) // 2 and any(c == 200 for c in calls) and any(c == 400 for c in calls)
    log = fuzz_server.log()
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 400):][:4000]
