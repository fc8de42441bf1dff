"""Stateful fuzzing with schemathesis along the OpenAPI links of the opt-out workflow:
documents added (`POST /admin/documents`) -> opted out by id (`POST /admin/optout`) ->
receipts listed (`GET /admin/optouts`), mixed with every other operation, as the admin;
not one 5xx response."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from tests.server.conftest import ADMIN_KEY  # noqa: E402
from tests.server.fuzzing import LIMITS, fuzz_optout_workflow  # noqa: E402

SCENARIOS = 30


def test_schema_links_the_optout_workflow(live) -> None:  # type: ignore[no-untyped-def]
    paths = live.client().get("/openapi.json").json()["paths"]
    added = paths["/admin/documents"]["post"]["responses"]["200"]["links"]
    opted = paths["/admin/optout"]["post"]["responses"]["200"]["links"]
    assert [link["operationId"] for link in added.values()] == \
        [paths["/admin/optout"]["post"]["operationId"]]
    assert [link["operationId"] for link in opted.values()] == \
        [paths["/admin/optouts"]["get"]["operationId"]]


@pytest.mark.slow
def test_optout_workflow_no_server_errors(make_live, model_dir: Path,  # type: ignore[no-untyped-def]
                                          store_dir: Path) -> None:
    live = make_live(model=model_dir, datastore=store_dir, admin_key=ADMIN_KEY, **LIMITS)
    receipts: list[dict] = []
    calls = fuzz_optout_workflow(live.url, ADMIN_KEY, SCENARIOS, receipts=receipts)
    # the fuzzer added documents and opted one out along the first link at least once
    for method, path in [("POST", "/admin/documents"), ("POST", "/admin/optout")]:
        assert calls[method, path, 200] > 0, (method, path, calls)
    # the second link (how often the fuzzer takes it is up to chance), followed by hand
    # from the last receipt: the receipts it lists include that one
    paths = live.client().get("/openapi.json").json()["paths"]
    link = paths["/admin/optout"]["post"]["responses"]["200"]["links"]["ListReceipts"]
    assert link["parameters"] == {"query.datastore": "$response.body#/datastore"}
    listed = live.client(ADMIN_KEY).get("/admin/optouts",
                                        params={"datastore": receipts[-1]["datastore"]})
    assert listed.status_code == 200, listed.text
    assert receipts[-1]["optout_id"] in [r["optout_id"] for r in listed.json()["receipts"]]
