"""Fuzzing the served API with schemathesis against the app's own OpenAPI schema.

Shared by tests/server/test_fuzz*.py (few examples) and bench/fuzz.py (many):
`check_response`, what every fuzzed response must satisfy, and `fuzz_optout_workflow`,
schemathesis's stateful mode along the schema's links (documents added -> opted out by
id -> receipts listed). A failure raises AssertionError naming the request (as a curl
command) and the response.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck

# Server limits for fuzzing: small, so every generated request is cheap on a CPU; 16
# tokens is the schema's default max_tokens, which the boundary cases (top_p = 5e-324,
# ...) keep.
LIMITS = {"max_tokens_limit": 16, "max_n": 2, "max_prompts": 4, "max_logprobs": 3,
          "request_timeout_s": 60, "batch_wait_ms": 1.0}
LICENSES = ["Public Domain", "CC0-1.0", "MIT", "PSF-2.0", "Apache-2.0", "CC-BY-4.0",
            "GPL-2.0-or-later", "All rights reserved"]
# Corpus lines (silo.corpus.jsonl.parse_line) for the stateful run to generate: the served
# schema types a document as any object, so generated ones would almost never be added.
DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "text", "license"],
    "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 40},
                   "text": {"type": "string", "minLength": 1, "maxLength": 400},
                   "license": {"enum": LICENSES},
                   "source": {"type": "string", "maxLength": 40},
                   "url": {"type": "string", "maxLength": 80}}}


def authorization(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _is_json(body: bytes | str | None) -> bool:
    try:
        json.loads(body or b"")
    except ValueError:
        return False
    return True


def check_response(case: Any, response: Any, key: str | None, admin_key: str) -> None:
    """No 5xx, and an admin route answers 401/403 to any caller but the admin (an
    unknown method (405) or a body that is not JSON (400) is refused before any key is
    read)."""
    where = (f"{case.as_curl_command(headers=authorization(key))}\n"
             f"-> {response.status_code} {response.text[:2000]}")
    assert response.status_code < 500, where
    if case.path.startswith("/admin") and key != admin_key:
        not_json = response.status_code == 400 and not _is_json(response.request.body)
        assert response.status_code in (401, 403, 405) or not_json, where


def fuzz_optout_workflow(url: str, admin_key: str, examples: int, steps: int = 6,
                         receipts: list[dict[str, Any]] | None = None,
                         ) -> Counter[tuple[str, str, int]]:
    """`examples` scenarios of up to `steps` calls, following the schema's links.
    Returns how many calls got each (method, path, status); the body of every opt-out
    answered 200 goes into `receipts`."""
    raw = schemathesis.openapi.from_url(f"{url}/openapi.json").raw_schema
    request = raw["paths"]["/admin/documents"]["post"]["requestBody"]
    body = request["content"]["application/json"]["schema"]
    components = raw["components"]["schemas"]
    name = body["$ref"].rsplit("/", 1)[-1] if "$ref" in body else None
    documents = (components[name] if name else body)["properties"]["documents"]
    documents["items"] = DOCUMENT_SCHEMA
    documents["maxItems"] = 3
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=url)
    headers = authorization(admin_key)
    calls: Counter[tuple[str, str, int]] = Counter()
    added = itertools.count()

    class OptOutWorkflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            # a fresh id per call: a replayed scenario must meet the same answers (not a
            # 409 for an id its first run added), or Hypothesis calls the test flaky
            docs = case.body.get("documents") if isinstance(case.body, dict) else None
            for doc in docs if case.path == "/admin/documents" and isinstance(docs, list) else []:
                if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                    doc["id"] = f"{doc['id']}~{next(added)}"

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": 60}

        def validate_response(self, response: Any, case: Any, *args: Any,
                              **kwargs: Any) -> None:
            calls[case.method, case.path, response.status_code] += 1
            if receipts is not None and (case.method, case.path, response.status_code) == (
                    "POST", "/admin/optout", 200):
                receipts.append(response.json())
            check_response(case, response, admin_key, admin_key)

    OptOutWorkflow.run(settings=hypothesis.settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        derandomize=True, suppress_health_check=list(HealthCheck)))
    return calls
