"""The datastore manifest: what a folder holds, which model made it, and checksums.

`manifest.json` names the datastore, its format version, the fingerprint of the model
whose hidden states are the keys (keys are only valid for that model), key dim and
dtypes, the build config (backends and parameters), counts, how far the index has been
filled, and a SHA-256 per 64 MiB chunk of every data file. At load the fingerprint is
compared (a mismatch is a ModelMismatchError) and every checksum verified, so a
corrupted file is reported by name rather than as a crash inside faiss.

The document table is not checksummed: it changes with every opt-out and its database
checks its own pages (SQLite's `PRAGMA quick_check` at load). `database` says where the
table is: None for SQLite in the folder, else the PostgreSQL host, port, dbname and schema
(never credentials; see datastore.table.factory). `index_location` names a kNN index
kept on a server (a Milvus URI without credentials, its database and collection).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from datastore.errors import CorruptDatastoreError, ModelMismatchError

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
CHUNK_BYTES = 64 << 20  # checksum granularity: appends rehash only the last chunk
STATUSES = ("building", "ready", "adding", "compacting", "reindexing")


@dataclass(frozen=True)
class Manifest:
    """Contents of manifest.json."""

    name: str
    model_fingerprint: str
    key_dim: int
    config: dict[str, Any]
    # "building" until the first build finishes, then "ready"; "adding"/"compacting"/
    # "reindexing" while those change the key files or the index (repaired at the next
    # open; a reindex's config is already the new one)
    status: str = "building"
    version: int = FORMAT_VERSION
    key_dtype: str = "float16"
    value_dtype: str = "int32"
    counts: dict[str, int] = field(default_factory=dict)
    indexed_upto: int = 0  # entries [0, indexed_upto) are in the kNN index
    text_indexed_upto: int = 0  # documents rows [0, this) are in the BM25/n-gram indexes
    checksums: dict[str, list[str]] = field(default_factory=dict)
    updated_at: float = 0.0
    database: dict[str, Any] | None = None  # PostgreSQL location of the table; None = SQLite
    # a kNN index on a server: its URI (no credentials), database and collection
    index_location: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.key_dim < 1:
            raise ValueError(f"key_dim must be >= 1, got {self.key_dim}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got "
                             f"{self.status!r}")
        if not self.model_fingerprint:
            raise ValueError("model_fingerprint must not be empty")

    def with_checksums(self, folder: Path, names: list[str]) -> Manifest:
        """A copy with fresh checksums of `names`, reusing unchanged leading chunks of
        files that only grew (their earlier chunks are not rehashed)."""
        sums = {n: file_checksums(Path(folder) / n, self.checksums.get(n, [])) for n in names}
        return replace(self, checksums=sums, updated_at=time.time())


def file_checksums(path: Path, previous: list[str] | None = None) -> list[str]:
    """SHA-256 hex of each CHUNK_BYTES chunk of `path`. Chunks that were complete in
    `previous` are trusted (append-only files); callers that rewrite a file pass None."""
    size = path.stat().st_size
    n_chunks = max(1, -(-size // CHUNK_BYTES))
    keep = [h for h in (previous or [])[:n_chunks - 1] if not h.startswith("partial:")]
    out = list(keep)
    with open(path, "rb") as f:
        f.seek(len(keep) * CHUNK_BYTES)
        for _ in range(len(keep), n_chunks):
            data = f.read(CHUNK_BYTES)
            digest = hashlib.sha256(data).hexdigest()
            out.append(digest if len(data) == CHUNK_BYTES else f"partial:{digest}")
    return out


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write atomically: a crash leaves the old or the new manifest, never half of one."""
    path = Path(folder) / MANIFEST_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(manifest), f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        raise CorruptDatastoreError(f"{path}: missing; {folder} is not a datastore folder")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CorruptDatastoreError(f"{path}: unreadable manifest ({e})") from None
    if manifest.version > FORMAT_VERSION:
        raise CorruptDatastoreError(
            f"{path}: format version {manifest.version} is newer than this code "
            f"({FORMAT_VERSION})")
    return manifest


def check_model(manifest: Manifest, fingerprint: str | None, folder: Path) -> None:
    """Refuse keys made by another model."""
    if fingerprint is not None and fingerprint != manifest.model_fingerprint:
        raise ModelMismatchError(
            f"{folder} was built with model {manifest.model_fingerprint[:16]}, not "
            f"{fingerprint[:16]}: its keys are only valid for the model that made them; "
            "rebuild the datastore for this model")


def verify_checksums(folder: Path, manifest: Manifest, skip: tuple[str, ...] = ()) -> None:
    """Raise CorruptDatastoreError naming the first file whose bytes do not match."""
    for name, expected in manifest.checksums.items():
        if name in skip:
            continue
        path = Path(folder) / name
        if not path.exists():
            raise CorruptDatastoreError(f"{path}: missing (listed in the manifest)")
        if file_checksums(path) != expected:
            raise CorruptDatastoreError(f"{path}: checksum mismatch; the file is corrupted")
