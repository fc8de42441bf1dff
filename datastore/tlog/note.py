"""Signed notes (c2sp.org/signed-note) and log checkpoints (c2sp.org/tlog-checkpoint), in
the text forms Go's golang.org/x/mod/sumdb/note reads and writes, so that transparency-log
tooling the project did not write can check what the log signs (the keys are in
datastore.tlog.keys).

    signed note    <text ending in LF> LF  then lines  "— <name> base64(key id || sig)" LF
    checkpoint     <origin> LF <decimal size> LF <base64 root hash> LF [extension lines]

A service without a key serves `Checkpoint.to_text()` alone; `open_note` tells such a
note apart (`UnverifiedNoteError`, with the text attached) from a malformed one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from datastore.errors import InvalidInputError
from datastore.tlog.keys import Signer, Verifier, b64, b64decode, check_key_name

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than LF
_SIZE = re.compile(r"0|[1-9][0-9]*")


class UnverifiedNoteError(InvalidInputError):
    """A note that no known key verified: unsigned, signed only by unknown keys, or
    carrying a bad signature by a known key. `text` is the note's text where the note
    was otherwise well formed; it must not be trusted."""

    def __init__(self, message: str, text: str | None = None) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key id, and the base64 of (key id || signature)."""

    name: str
    key_id: int
    base64: str


@dataclass(frozen=True)
class NoteText:
    """An opened note: its text, the known keys whose signatures verified, and the
    signatures by keys that were not given (kept, not checked)."""

    text: str
    verified_by: tuple[Verifier, ...]
    unknown: tuple[NoteSignature, ...] = ()


def _check_text(text: str, what: str) -> None:
    """Valid UTF-8, no ASCII control characters but LF (c2sp.org/signed-note)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid UTF-8") from None
    bad = _CONTROL.search(text)
    if bad:
        raise InvalidInputError(
            f"{what} holds the control character {bad.group()!r} at offset {bad.start()}")


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """The signed note of `text` (which ends with LF) by each signer, in order."""
    _check_text(text, "note text")
    if not text.endswith("\n"):
        raise InvalidInputError("note text must end with a newline")
    if not signers:
        raise InvalidInputError("a signed note needs at least one signer; a log without a "
                                "key serves its checkpoint text alone")
    message = text.encode("utf-8")
    lines, seen = [], set()
    for signer in signers:
        if (signer.name, signer.key_id) in seen:
            continue
        seen.add((signer.name, signer.key_id))
        sig = signer.key_id.to_bytes(4, "big") + signer.sign(message)
        lines.append(f"{SIGNATURE_PREFIX}{signer.name} {b64(sig)}\n")
    return text + "\n" + "".join(lines)


def _parse_signature(line: str, number: int) -> tuple[NoteSignature, bytes]:
    """'— <name> <base64>' -> (its fields, the signature without the key id)."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise InvalidInputError(f"malformed note: signature line {number} does not start "
                                "with an em dash and a space")
    name, _, encoded = line[len(SIGNATURE_PREFIX):].partition(" ")
    try:
        check_key_name(name)
    except InvalidInputError as e:
        raise InvalidInputError(f"malformed note: signature line {number}: {e}") from None
    raw = b64decode(encoded, f"malformed note: signature line {number}") if encoded else b""
    if len(raw) < 5:
        raise InvalidInputError(f"malformed note: signature line {number} is too short")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), encoded), raw[4:]


def open_note(note: str | bytes, verifiers: Sequence[Verifier]) -> NoteText:
    """Check a signed note against the known keys and return its text.

    Signatures by unknown keys are kept but not checked. Raises `UnverifiedNoteError`
    when the note carries no signature, none by a known key, or a known key's signature
    that fails; `InvalidInputError` when it is malformed.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError("note is not valid UTF-8") from None
    _check_text(note, "note")
    split = note.rfind("\n\n")
    block = note[split + 2:] if split >= 0 else ""
    if split < 0 or not block.startswith(SIGNATURE_PREFIX):
        text = note if note.endswith("\n") else None
        raise UnverifiedNoteError("the note carries no signature", text)
    if not block.endswith("\n"):
        raise InvalidInputError("malformed note: the signature block must end with a newline")
    text, lines = note[:split + 1], block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InvalidInputError(f"note carries more than {MAX_SIGNATURES} signatures")
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: dict[tuple[str, int], Verifier] = {}
    unknown: dict[str, NoteSignature] = {}
    for number, line in enumerate(lines, start=1):
        sig, raw = _parse_signature(line, number)
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unknown.setdefault(line, sig)
        elif (sig.name, sig.key_id) not in verified:
            if not verifier.verify(text.encode("utf-8"), raw):
                raise UnverifiedNoteError(
                    f"the signature by {sig.name}+{sig.key_id:08x} does not verify", text)
            verified[(sig.name, sig.key_id)] = verifier
    if not verified:
        names = ", ".join(f"{s.name}+{s.key_id:08x}" for s in unknown.values())
        raise UnverifiedNoteError(
            f"the note carries no signature by a known key (signed by {names})", text)
    return NoteText(text, tuple(verified.values()), tuple(unknown.values()))


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line or "\n" in line:
        raise InvalidInputError(f"{what} must be one non-empty line")
    _check_text(line, what)


@dataclass(frozen=True)
class Checkpoint:
    """A tree head as c2sp.org/tlog-checkpoint note text: origin, size, root, then
    optional opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if not isinstance(self.extensions, tuple):
            raise InvalidInputError("checkpoint extensions must be a tuple of lines")
        for line in self.extensions:
            _check_line(line, "checkpoint extension line")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not (
                0 <= self.size < 2**63):
            raise InvalidInputError(f"checkpoint size must be an integer in [0, 2^63), "
                                    f"got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise InvalidInputError("checkpoint root must be 32 bytes")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text (not a signed note: see `open_checkpoint`)."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise InvalidInputError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidInputError("checkpoint text needs origin, size and root lines")
        origin, size, root, *extensions = lines
        if not _SIZE.fullmatch(size) or len(size) > 19:
            raise InvalidInputError(
                f"checkpoint size {size[:40]!r} is not a decimal number without leading zeros")
        raw = b64decode(root, "checkpoint root")
        if len(raw) != 32 or b64(raw) != root:
            raise InvalidInputError("checkpoint root is not the base64 of 32 bytes")
        return cls(origin, int(size), raw, tuple(extensions))

    def sign(self, signers: Sequence[Signer]) -> str:
        """This checkpoint as a signed note."""
        return sign_note(self.to_text(), signers)


def open_checkpoint(note: str | bytes, verifiers: Sequence[Verifier]) -> Checkpoint:
    """Verify a signed checkpoint note (see `open_note`) and parse its text."""
    return Checkpoint.parse(open_note(note, verifiers).text)
