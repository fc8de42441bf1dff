"""Note keys, signed notes, checkpoints and key files."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from datastore.errors import ConflictError, InvalidInputError, NotFoundError
from datastore.tlog.keys import (
    Signer,
    Verifier,
    generate_key,
    key_id,
    read_key_file,
    write_key_file,
)
from datastore.tlog.note import (
    Checkpoint,
    UnverifiedNoteError,
    open_checkpoint,
    open_note,
    sign_note,
)

SEED = bytes(range(32))
LOG = Signer.from_seed("silo.example/log", SEED)
OTHER = Signer.from_seed("silo.example/log", bytes(range(1, 33)))  # same name, other key
ROOT = bytes(range(32, 64))

# The example of c2sp.org/signed-note
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = ("This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YE"
             "q6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")


def test_the_specs_example_verifies() -> None:
    opened = open_note(SPEC_NOTE, [Verifier.from_text(SPEC_VKEY)])
    assert opened.text == "This is an example message.\n"
    assert open_note(SPEC_NOTE.encode(), [Verifier.from_text(SPEC_VKEY)]) == opened


def test_generated_keys_round_trip_and_sign() -> None:
    signer_text, verifier_text = generate_key("example.org/log")
    signer, verifier = Signer.from_text(signer_text), Verifier.from_text(verifier_text)
    assert signer.verifier() == verifier and signer.to_text() == signer_text
    assert verifier.to_text() == verifier_text
    assert verifier.key_id == key_id("example.org/log", verifier.public_key)
    assert signer_text.startswith("PRIVATE+KEY+example.org/log+")
    assert f"{verifier.key_id:08x}" in verifier_text
    assert Verifier.from_text(verifier_text + "\n") == verifier
    assert "seed" not in repr(signer) and signer_text.split("+")[-1] not in repr(signer)
    assert generate_key("example.org/log") != (signer_text, verifier_text)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "<name>"),
    ("name+abc", "<name>"),
    ("na me+00000000+AA==", "spaces"),
    ("+00000000+AA==", "non-empty"),
    ("name+0000000g+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 hex"),
    ("name+530d903+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 hex"),
    ("example.com/foo+530d903a+AekyeRrm56hApGFk*QR4ZCbV54Id2LKaANYcrnKv3U2k", "base64"),
    ("example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "not Ed25519"),
    ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv", "32 bytes"),
    ("example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
    ("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
])
def test_malformed_verifier_keys_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        Verifier.from_text(text)


def test_malformed_signer_keys_say_what_is_wrong_without_the_secret() -> None:
    good = LOG.to_text()
    secret = good.split("+")[-1]
    for bad, reason in [(good[len("PRIVATE+"):], "PRIVATE"),
                        (good.replace("silo.example/log", "silo.example/lag"), "does not match"),
                        (good[:-4], "base64|32 bytes"),
                        (good.replace("PRIVATE+KEY+", "PRIVATE+KEY++"), "non-empty")]:
        with pytest.raises(InvalidInputError, match=reason) as e:
            Signer.from_text(bad)
        assert secret[:12] not in str(e.value)


def test_sign_and_open_round_trip() -> None:
    note = sign_note("hello\n\nworld\n", [LOG])
    assert note.startswith("hello\n\nworld\n\n— silo.example/log ")
    raw = base64.b64decode(note.rsplit(" ", 1)[1])
    assert int.from_bytes(raw[:4], "big") == LOG.key_id and len(raw) == 68
    opened = open_note(note, [LOG.verifier()])
    assert opened.text == "hello\n\nworld\n" and opened.verified_by == (LOG.verifier(),)
    assert sign_note("x\n", [LOG, LOG]).count("—") == 1


@pytest.mark.parametrize("text", ["no newline", "tab\there\n", "cr\r\n", "\ud800\n"])
def test_signing_refuses_texts_the_spec_forbids(text: str) -> None:
    with pytest.raises(InvalidInputError):
        sign_note(text, [LOG])


def test_signing_needs_a_signer() -> None:
    with pytest.raises(InvalidInputError, match="at least one signer"):
        sign_note("x\n", [])


def test_a_wrong_signature_by_a_known_key_is_refused() -> None:
    note = sign_note("text\n", [LOG])
    forged = note.replace("text\n", "texT\n", 1)
    with pytest.raises(UnverifiedNoteError, match="does not verify") as e:
        open_note(forged, [LOG.verifier()])
    assert e.value.text == "texT\n"
    # a signature by another key under the same name and another id is only unknown
    with pytest.raises(UnverifiedNoteError, match="no signature by a known key"):
        open_note(sign_note("text\n", [OTHER]), [LOG.verifier()])


def test_a_signature_claiming_a_known_key_id_must_verify() -> None:
    note = sign_note("text\n", [OTHER])
    name, b64 = note.rsplit("\n", 2)[1][2:].split(" ")
    raw = base64.b64decode(b64)
    claimed = LOG.key_id.to_bytes(4, "big") + raw[4:]
    spoof = note.replace(b64, base64.b64encode(claimed).decode())
    with pytest.raises(UnverifiedNoteError, match="does not verify"):
        open_note(spoof, [LOG.verifier()])


def test_unknown_keys_are_tolerated_beside_a_known_one() -> None:
    witness = Signer.from_seed("witness.example", bytes(32))
    note = sign_note("text\n", [witness, LOG])
    opened = open_note(note, [LOG.verifier()])
    assert opened.verified_by == (LOG.verifier(),)
    assert [(s.name, s.key_id) for s in opened.unknown] == [("witness.example", witness.key_id)]
    with pytest.raises(UnverifiedNoteError, match="witness.example"):
        open_note(note, [])


def test_an_unsigned_note_is_told_apart_from_a_malformed_one() -> None:
    text = Checkpoint("silo.example/log", 3, ROOT).to_text()
    with pytest.raises(UnverifiedNoteError, match="carries no signature") as e:
        open_note(text, [LOG.verifier()])
    assert e.value.text == text
    for malformed in [text + "\n— silo.example/log AAAA\n",  # too short a signature
                      text + "\n— silo.example/log !!!!!!!!\n",
                      text + "\n— silo.example/log " + "A" * 92,  # no final newline
                      text + "\n— bad name AAAAAAAAAAAA\n",
                      sign_note(text, [LOG]) + "not a signature\n",
                      sign_note(text, [LOG]).replace("log\n", "log\x01\n", 1)]:
        with pytest.raises(InvalidInputError) as err:
            open_note(malformed, [LOG.verifier()])
        assert not isinstance(err.value, UnverifiedNoteError) or "does not verify" in str(
            err.value), malformed
    with pytest.raises(InvalidInputError, match="UTF-8"):
        open_note(b"caf\xe9\n\n\xe2\x80\x94 x AAAAAAAA\n", [LOG.verifier()])


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint("silo.example/log", 20852163, ROOT, ("ext one",))
    text = cp.to_text()
    assert text == ("silo.example/log\n20852163\n" + base64.b64encode(ROOT).decode()
                    + "\next one\n")
    assert Checkpoint.parse(text) == cp
    assert open_checkpoint(cp.sign([LOG]), [LOG.verifier()]) == cp
    assert Checkpoint.parse(Checkpoint("o", 0, ROOT).to_text()).size == 0


@pytest.mark.parametrize(("text", "reason"), [
    ("o\n5\n" + base64.b64encode(ROOT).decode(), "newline"),
    ("o\n5\n", "origin, size and root"),
    ("\n5\n" + base64.b64encode(ROOT).decode() + "\n", "origin"),
    ("o\n05\n" + base64.b64encode(ROOT).decode() + "\n", "leading zeros"),
    ("o\n-5\n" + base64.b64encode(ROOT).decode() + "\n", "decimal"),
    ("o\n+5\n" + base64.b64encode(ROOT).decode() + "\n", "decimal"),
    ("o\n٥\n" + base64.b64encode(ROOT).decode() + "\n", "decimal"),
    ("o\n99999999999999999999\n" + base64.b64encode(ROOT).decode() + "\n", "decimal"),
    ("o\n5\n" + base64.b64encode(ROOT[:31]).decode() + "\n", "32 bytes"),
    ("o\n5\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n", "base64"),
    ("o\n5\n" + base64.b64encode(ROOT).decode() + "\n\n", "extension"),
])
def test_malformed_checkpoints_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        Checkpoint.parse(text)


def test_checkpoint_fields_are_validated() -> None:
    for args in [("", 1, ROOT), ("o\np", 1, ROOT), ("o", -1, ROOT), ("o", True, ROOT),
                 ("o", 1, ROOT[:5]), ("o", 1, ROOT, ("",)), ("o", 1, ROOT, ("a\nb",))]:
        with pytest.raises(InvalidInputError):
            Checkpoint(*args)  # type: ignore[arg-type]


def test_key_file_is_created_owner_only_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    old = os.umask(0)  # even with no umask the file is never readable by others
    try:
        write_key_file(path, LOG.to_text())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == LOG


def test_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    path.write_text("something else\n")
    with pytest.raises(ConflictError, match="already exists"):
        write_key_file(path, LOG.to_text())
    assert path.read_text() == "something else\n"
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConflictError):
        write_key_file(link, LOG.to_text())
    assert not (tmp_path / "elsewhere").exists()


def test_key_file_refuses_a_malformed_key_before_creating(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        write_key_file(tmp_path / "k", "PRIVATE+KEY+nonsense")
    assert not (tmp_path / "k").exists()


def test_key_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    with pytest.raises(NotFoundError, match=str(path)):
        read_key_file(path)
    write_key_file(path, LOG.to_text())
    path.chmod(0o640)
    with pytest.raises(InvalidInputError, match=f"{path} has mode 0640"):
        read_key_file(path)
    path.chmod(0o604)
    with pytest.raises(InvalidInputError, match="0604"):
        read_key_file(path)
    path.chmod(0o600)
    path.write_text("PRIVATE+KEY+broken\n")
    with pytest.raises(InvalidInputError, match=str(path)):
        read_key_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidInputError, match="UTF-8"):
        read_key_file(path)
    with pytest.raises(InvalidInputError, match="regular file"):
        read_key_file(tmp_path)
