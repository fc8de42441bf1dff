"""Opening a datastore folder: checking it, and reading its parts as far as its manifest's
status allows (what a crash cut short is finished by `Writer.recover` afterwards).

A build starts or resumes here (`start_build`): a folder that already holds a ready
datastore is refused, one whose build stopped is resumed with the config it was first
given. `open_state` checks the model fingerprint and, with `verify`, every file's
checksum and the table's integrity, then opens the table, the key files and the index.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from datastore.config import DatastoreConfig
from datastore.encoder import KeyEncoder
from datastore.errors import ConflictError, CorruptDatastoreError
from datastore.index.factory import open_index
from datastore.index.faiss_index import INDEX_FILE
from datastore.knn import FILES as KV_FILES
from datastore.knn import KeyValueStore
from datastore.manifest import (
    Manifest,
    check_model,
    file_checksums,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from datastore.store.state import StoreState, text_indexes
from datastore.table.factory import new_database_location, open_table


def start_build(folder: Path, encoder: KeyEncoder, config: DatastoreConfig,
                ) -> tuple[Manifest, DatastoreConfig]:
    """The manifest and config of a build in `folder`: new, or the one a stopped build
    recorded (resumed as first asked)."""
    if (folder / "manifest.json").exists():
        manifest = read_manifest(folder)
        check_model(manifest, encoder.fingerprint, folder)
        if manifest.status == "ready":
            raise ConflictError(f"{folder} already holds a built datastore; use add")
        return manifest, DatastoreConfig.from_json(manifest.config)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(config.name, encoder.fingerprint, encoder.dim, config.to_json(),
                        database=new_database_location(config.name))
    write_manifest(folder, manifest)
    text_indexes(folder, config, create=True)
    return manifest, config


def open_state(folder: Path, encoder_fingerprint: str | None, verify: bool) -> StoreState:
    """The parts of a built datastore. A different model fingerprint is a
    ModelMismatchError; `verify` checks every file against the manifest's checksums."""
    manifest = read_manifest(folder)
    check_model(manifest, encoder_fingerprint, folder)
    if manifest.status == "building":
        raise CorruptDatastoreError(
            f"{folder}: the build did not finish; run the build again to resume it")
    config = DatastoreConfig.from_json(manifest.config)
    interrupted = manifest.status in ("adding", "compacting", "reindexing")
    # with a shared index the key files are a cache that grows with other replicas'
    # adds (pulled from the index), past the manifest's checksums
    cache = KV_FILES if config.shares_index else ()
    if verify:
        # after an interrupted add the key files and index may have grown past their
        # checksums; the files an add never touches are still checked
        verify_checksums(folder, manifest, skip=(*KV_FILES, INDEX_FILE) if interrupted
                         else cache)
    table = open_table(folder, manifest.database)
    if verify:
        table.check_integrity()
    kv = KeyValueStore.from_dir(folder, manifest.key_dim)
    if manifest.status == "adding":
        # keep the documents the table committed, drop key rows it never committed
        kv.truncate(table.snapshot().n_entries)
        index = open_index(config, folder, kv)
        saved = manifest.checksums.get(INDEX_FILE)
        if saved is not None and file_checksums(folder / INDEX_FILE) != saved:
            # the index was saved after the add's vectors went in (saves are atomic)
            manifest = replace(manifest, indexed_upto=len(kv))
        return StoreState(folder, manifest, table, kv, index)
    if manifest.status == "reindexing":  # the new config is recorded: built again
        return StoreState(folder, manifest, table, kv, None)
    if (manifest.status == "ready" and not cache and len(kv) > manifest.indexed_upto
            and table.snapshot().n_entries <= manifest.indexed_upto):
        # rows a write appended but never committed (a writer killed before it recorded
        # its intent): a tail past the manifest's count, dropped
        kv.truncate(manifest.indexed_upto)
    if manifest.status != "compacting" and len(kv) != manifest.indexed_upto and not cache:
        raise CorruptDatastoreError(
            f"{folder}: the key files hold {len(kv)} entries, the manifest "
            f"{manifest.indexed_upto}")
    return StoreState(folder, manifest, table, kv, open_index(config, folder, kv))
