"""Bad-input fuzzing with schemathesis against the app's own OpenAPI schema: a bounded
run over every operation, with the admin key, and not one 5xx response."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.server.conftest import ADMIN_KEY  # noqa: E402


@pytest.fixture
def fuzz_schema(make_live, model_dir: Path, store_dir: Path):  # type: ignore[no-untyped-def]
    # small limits keep every generated request cheap on a CPU
    live = make_live(model=model_dir, datastore=store_dir, admin_key=ADMIN_KEY,
                     max_tokens_limit=8, max_n=2, max_prompts=4, max_logprobs=3,
                     request_timeout_s=60)
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
def test_no_server_errors(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
