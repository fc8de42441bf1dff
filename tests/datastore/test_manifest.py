"""Manifest, chunked checksums and the model check."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore import manifest as m
from datastore.errors import CorruptDatastoreError, ModelMismatchError


def test_roundtrip_and_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "CHUNK_BYTES", 4)
    (tmp_path / "data").write_bytes(b"abcdefghij")
    man = m.Manifest("ds", "fp", 8, {"backend": "exact"}).with_checksums(tmp_path, ["data"])
    assert len(man.checksums["data"]) == 3 and man.checksums["data"][-1].startswith("partial")
    m.write_manifest(tmp_path, man)
    assert m.read_manifest(tmp_path) == man
    m.verify_checksums(tmp_path, man)
    with open(tmp_path / "data", "ab") as f:
        f.write(b"klm")
    grown = man.with_checksums(tmp_path, ["data"])
    assert grown.checksums["data"][:2] == man.checksums["data"][:2]  # reused, not rehashed
    assert grown.checksums["data"] == m.file_checksums(tmp_path / "data")
    (tmp_path / "data").write_bytes(b"abcdefghiXklm")
    with pytest.raises(CorruptDatastoreError, match="data: checksum"):
        m.verify_checksums(tmp_path, grown)


def test_model_mismatch_and_bad_manifest(tmp_path: Path) -> None:
    man = m.Manifest("ds", "model-a", 8, {})
    m.check_model(man, "model-a", tmp_path)
    m.check_model(man, None, tmp_path)
    with pytest.raises(ModelMismatchError, match="model-a"):
        m.check_model(man, "model-b", tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptDatastoreError, match="manifest.json"):
        m.read_manifest(tmp_path)
    with pytest.raises(ValueError, match="key_dim"):
        m.Manifest("ds", "fp", 0, {})
