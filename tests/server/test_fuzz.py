"""Bad-input fuzzing with schemathesis against the app's own OpenAPI schema: bounded runs
over every operation (its examples, the coverage phase's boundary values, then random
data that fits the schema and data that does not), from a few seeds, as the admin, as a
user (admin routes must answer 401/403) and with no key, and not one 5xx response.
Longer runs: bench/fuzz.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from server.settings import Settings  # noqa: E402
from tests.server.conftest import ADMIN_KEY, USER_KEY, start_server  # noqa: E402
from tests.server.fuzzing import LIMITS, authorization, check_response  # noqa: E402

EXAMPLES = 40  # random cases per operation and run, on top of examples and boundaries
RUNS = {"admin-seed1": (ADMIN_KEY, 1), "admin-seed2": (ADMIN_KEY, 2),
        "admin-seed3": (ADMIN_KEY, 3), "user-seed1": (USER_KEY, 1),
        "user-seed2": (USER_KEY, 2), "nokey-seed1": (None, 1)}


@pytest.fixture(scope="module")
def fuzz_url(model_dir: Path, store_template: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for every run of this module (they add to and opt out of its store)."""
    folder = tmp_path_factory.mktemp("fuzz")
    store = Path(shutil.copytree(store_template, folder / "main"))
    values: dict[str, object] = {"model": model_dir, "datastore": store,
                                 "admin_key": ADMIN_KEY, "api_keys": USER_KEY,
                                 "audit_log": folder / "audit.jsonl", **LIMITS}
    server, thread, url = start_server(Settings(**values))  # type: ignore[arg-type]
    yield url
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(params=list(RUNS.values()), ids=list(RUNS))
def fuzz_run(request: pytest.FixtureRequest) -> tuple[str | None, int]:
    """The caller's key (None: no key) and the seed of one run."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def fuzz_schema(fuzz_url: str, fuzz_run: tuple[str | None, int]):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_url(fuzz_url + "/openapi.json")
    schema.config.seed = fuzz_run[1]
    return schema


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
def test_no_server_errors(case, fuzz_run) -> None:  # type: ignore[no-untyped-def]
    key = fuzz_run[0]
    response = case.call(headers=authorization(key), timeout=60)
    check_response(case, response, key, ADMIN_KEY)
