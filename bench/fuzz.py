"""A long fuzz run: schemathesis against the served API's own OpenAPI schema.

    OMP_NUM_THREADS=1 python bench/fuzz.py [--examples 500] [--seed 1] [--preset mini]
        [--scenarios 200]

Starts the server in its own process (bench/served.py, small request limits so each
generated request is cheap), then runs, each from the same seed:

  * the schemathesis CLI over every operation (examples, boundary values, random data
    that fits the schema and data that does not, and its stateful phase), with
    `--max-examples` = --examples, as the admin and then as a user, with the one check
    that matters here: no 5xx;
  * the stateful opt-out workflow of tests/server/test_fuzz_stateful.py (documents
    added -> opted out -> receipts listed, along the schema's links) with --scenarios
    scenarios.

The CI tests (tests/server/test_fuzz*.py) run the same with few examples. Exits
non-zero if any run found a failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from served import ROOT, build_datastore, build_model, serve, stop

from tests.server.conftest import ADMIN_KEY, USER_KEY
from tests.server.fuzzing import LIMITS, fuzz_optout_workflow


def _cli(url: str, key: str, examples: int, seed: int) -> int:
    """The schemathesis CLI's exit status for one caller."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", str(examples),
               "--seed", str(seed), "--header", f"Authorization: Bearer {key}",
               "--request-timeout", "60", "--continue-on-failure", "--no-color"]
    return subprocess.run(command, cwd=ROOT).returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=500, help="random cases per operation")
    ap.add_argument("--scenarios", type=int, default=200, help="stateful workflow runs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    model = build_model(work / "model", args.preset)
    store = build_datastore(model, work / "store")
    proc, url = serve(model, store, args.threads, admin_key=ADMIN_KEY, api_keys=USER_KEY,
                      **LIMITS)
    failed: list[str] = []
    try:
        for name, key in (("admin", ADMIN_KEY), ("user", USER_KEY)):
            print(f"== schemathesis as {name}: {args.examples} examples, seed {args.seed}",
                  flush=True)
            if _cli(url, key, args.examples, args.seed) != 0:
                failed.append(f"schemathesis as {name}")
        print(f"== opt-out workflow: {args.scenarios} scenarios", flush=True)
        try:
            calls: Counter[tuple[str, str, int]] = fuzz_optout_workflow(
                url, ADMIN_KEY, args.scenarios)
            for (method, path, status), n in sorted(calls.items()):
                print(f"  {method} {path} -> {status}: {n}")
        except AssertionError as e:
            print(e)
            failed.append("opt-out workflow")
    finally:
        stop(proc)
    print(f"failures: {', '.join(failed)}" if failed else "no failures")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
