"""`silo log keygen` and `silo verify`: the transparency log's key for operators, and the
client with which a data owner or an auditor checks a removal without trusting the
operator.

`silo verify RECEIPT.json --server URL` checks a receipt: the checkpoint's signature, the
leaf's inclusion, that it removes the receipt's documents, and that the log has only
grown since (against `--since`, a checkpoint saved earlier, too). `silo verify --server
URL --doc-id ID` replays the whole log, checked against the signed checkpoint, for one
document. One line per finding; exit 0 only when everything verifies, 1 when something
does not, 2 for bad input.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from datastore.errors import InvalidInputError
from datastore.tlog.keys import Verifier
from silo.cli.console import console, out

FETCH_TIMEOUT_S = 30


def keygen(
    out_file: Annotated[Path, typer.Option("--out", help="The key file to create (0600).")],
    name: Annotated[str, typer.Option(help="The key's name, shown in every signature.")
                    ] = "silo-log",
) -> None:
    """Make the Ed25519 key that signs the log's checkpoints (SILO_LOG_KEY_FILE)."""
    from datastore.tlog.keys import generate_key, write_key_file

    signer, verifier = generate_key(name)
    write_key_file(out_file, signer)
    console.print(f"wrote the signing key to {out_file} (readable by its owner only); set "
                  f"SILO_LOG_KEY_FILE={out_file} for every replica. The verifier key, for "
                  "data owners:")
    out.print(verifier, highlight=False)


def http_fetch(server: str, datastore: str | None) -> Callable[[str], bytes]:
    """GET a path of the log's public routes (HTTP errors raise, with the server's
    message)."""
    base = server.rstrip("/")

    def fetch(path: str) -> bytes:
        if datastore is not None:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(
                {"datastore": datastore})
        try:
            with urllib.request.urlopen(base + path, timeout=FETCH_TIMEOUT_S) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise OSError(f"HTTP {e.code}: {message}") from None

    return fetch


def _verifier(key: str | None) -> Verifier | None:
    if key is None:
        return None
    path = Path(key)
    return Verifier.from_text(path.read_text().strip() if path.is_file() else key.strip())


def verify(
    receipt: Annotated[Path | None, typer.Argument(
        help="An opt-out receipt (JSON, as the admin API or `silo datastore remove` "
             "gives it).")] = None,
    server: Annotated[str, typer.Option(help="The service's base URL.")
                      ] = "http://127.0.0.1:8000",
    since: Annotated[Path | None, typer.Option(
        help="A checkpoint note saved earlier: the log must extend it.")] = None,
    doc_id: Annotated[list[str] | None, typer.Option(
        help="A document id (repeatable): its history, or what the receipt must name.")
    ] = None,
    key: Annotated[str | None, typer.Option(
        help="The log's verifier key (text or a file); default: the server's own, "
             "which proves less.")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Save the server's current checkpoint here once it verifies (for --since).")
    ] = None,
    datastore: Annotated[str | None, typer.Option(help="A datastore of the service.")
                         ] = None,
) -> None:
    """Check an opt-out receipt, or a document's history, against the transparency log."""
    from datastore.tlog.verify import CHECKPOINT_PATH, all_ok, document_history, verify_receipt

    fetch = http_fetch(server, datastore)
    verifier = _verifier(key)
    history = None
    if receipt is not None:
        try:
            body = json.loads(receipt.read_text())
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"{receipt}: not a receipt ({e})") from None
        findings = verify_receipt(body, fetch, verifier,
                                  since.read_text() if since else None, doc_id or ())
    elif doc_id:
        if len(doc_id) != 1:
            raise InvalidInputError("a history is of one document: give --doc-id once")
        findings, history = document_history(fetch, verifier, doc_id=doc_id[0])
    else:
        raise InvalidInputError("give a receipt file, or --doc-id for a document's history")
    for finding in findings:
        out.print(str(finding), highlight=False)
    if history is not None:
        for event in history.events:
            out.print(f"      leaf {event.index} at {event.time}: {event.action}",
                      highlight=False)
        out.print(history.summary(), highlight=False)
    ok = all_ok(findings)
    if ok and save is not None:
        save.write_bytes(fetch(CHECKPOINT_PATH))
        out.print(f"saved the current checkpoint to {save}", highlight=False)
    if not ok:
        sys.exit(1)

