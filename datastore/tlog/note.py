"""Signed notes (c2sp.org/signed-note), log checkpoints (c2sp.org/tlog-checkpoint) and
the Ed25519 keys that sign them, in the text forms Go's golang.org/x/mod/sumdb/note
reads and writes, so that transparency-log tooling the project did not write can check
what the log signs.

    verifier key   <name>+<8 hex key id>+base64(0x01 || 32-byte public key)
    signer key     PRIVATE+KEY+<name>+<8 hex key id>+base64(0x01 || 32-byte seed)
    key id         SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian
    signed note    <text ending in LF> LF  then lines  "— <name> base64(key id || sig)" LF

A service without a key serves `Checkpoint.to_text()` alone; `open_note` tells such a
note apart (`UnverifiedNoteError`, with the text attached) from a malformed one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from datastore.errors import ConflictError, InvalidInputError, NotFoundError

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16
MAX_KEY_FILE_BYTES = 4096

# Unicode White_Space, which key names may not contain (Go's unicode.IsSpace)
_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than LF
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_SIZE = re.compile(r"0|[1-9][0-9]*")


class UnverifiedNoteError(InvalidInputError):
    """A note that no known key verified: unsigned, signed only by unknown keys, or
    carrying a bad signature by a known key. `text` is the note's text where the note
    was otherwise well formed; it must not be trusted."""

    def __init__(self, message: str, text: str | None = None) -> None:
        super().__init__(message)
        self.text = text


def check_key_name(name: str) -> None:
    """A key name is non-empty text without Unicode spaces or '+'."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError("key name must be a non-empty string")
    if any(c in _SPACES for c in name) or "+" in name or _CONTROL.search(name):
        raise InvalidInputError(
            f"key name {name!r} may not contain spaces, control characters or '+'")


def key_id(name: str, public_key: bytes) -> int:
    """The uint32 id of an Ed25519 key under a name."""
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidInputError(f"{what} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_parts(text: str, what: str) -> tuple[str, int, bytes]:
    """'<name>+<hex id>+<base64 0x01 || 32 bytes>' -> (name, id, 32 key bytes)."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise InvalidInputError(f"{what} must be <name>+<key id>+<key>")
    name, hex_id, b64 = parts
    check_key_name(name)
    if not _HEX8.fullmatch(hex_id):
        raise InvalidInputError(f"{what} for {name}: key id {hex_id!r} is not 8 hex digits")
    raw = _b64decode(b64, f"{what} for {name}: the key")
    if not raw or raw[0] != ALG_ED25519:
        alg = f"0x{raw[0]:02x}" if raw else "none"
        raise InvalidInputError(f"{what} for {name}: key type {alg} is not Ed25519 (0x01)")
    if len(raw) != 33:
        raise InvalidInputError(
            f"{what} for {name}: an Ed25519 key is 32 bytes, got {len(raw) - 1}")
    return name, int(hex_id, 16), raw[1:]


@dataclass(frozen=True)
class Verifier:
    """A public note key: checks signatures by one (name, key id)."""

    name: str
    key_id: int
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise InvalidInputError("an Ed25519 public key is 32 bytes")
        if self.key_id != key_id(self.name, self.public_key):
            raise InvalidInputError(
                f"key id {self.key_id:08x} does not match the key for {self.name} "
                f"(expected {key_id(self.name, self.public_key):08x})")

    @classmethod
    def from_text(cls, text: str) -> Verifier:
        """Parse a verifier key '<name>+<id>+<key>' (surrounding whitespace ignored)."""
        if not isinstance(text, str):
            raise InvalidInputError("a verifier key is text")
        name, kid, public = _key_parts(text.strip(), "verifier key")
        return cls(name, kid, public)

    def to_text(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{_b64(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff `signature` (64 bytes, without the key id) signs `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A private note key. The seed never appears in repr or error messages."""

    name: str
    key_id: int
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise InvalidInputError("an Ed25519 private key seed is 32 bytes")
        if self.key_id != key_id(self.name, self._public()):
            raise InvalidInputError(
                f"signer key for {self.name}: key id {self.key_id:08x} does not match its key")

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Signer:
        """The signer for a 32-byte Ed25519 seed under `name`."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise InvalidInputError("an Ed25519 private key seed is 32 bytes")
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return cls(name, key_id(name, public), seed)

    @classmethod
    def from_text(cls, text: str) -> Signer:
        """Parse 'PRIVATE+KEY+<name>+<id>+<seed>' (surrounding whitespace ignored)."""
        if not isinstance(text, str) or not text.strip().startswith("PRIVATE+KEY+"):
            raise InvalidInputError("a signer key starts with PRIVATE+KEY+")
        name, kid, seed = _key_parts(text.strip()[len("PRIVATE+KEY+"):], "signer key")
        return cls(name, kid, seed)

    def _public(self) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()

    def to_text(self) -> str:
        return (f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+"
                f"{_b64(bytes([ALG_ED25519]) + self.seed)}")

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_id, self._public())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` (deterministic, RFC 8032)."""
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def generate_key(name: str) -> tuple[str, str]:
    """A fresh key under `name`: (signer key text, verifier key text)."""
    check_key_name(name)
    signer = Signer.from_seed(name, Ed25519PrivateKey.generate().private_bytes_raw())
    return signer.to_text(), signer.verifier().to_text()


def write_key_file(path: str | os.PathLike[str], signer_text: str) -> None:
    """Create `path` holding the signer key, readable by its owner only from the moment
    it exists; an existing file is never overwritten."""
    signer = Signer.from_text(signer_text)  # never store a key that cannot be read back
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConflictError(f"key file {os.fspath(path)} already exists; not overwriting "
                            "it") from None
    except OSError as e:
        raise InvalidInputError(f"cannot create key file {os.fspath(path)}: "
                                f"{e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask may have taken the owner's bits
            f.write(signer.to_text() + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        os.unlink(path)
        raise InvalidInputError(f"cannot write key file {os.fspath(path)}: "
                                f"{e.strerror}") from None


def read_key_file(path: str | os.PathLike[str]) -> Signer:
    """The signer key in `path`, which must be a regular file no one but its owner can
    read or write."""
    where = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"key file {where} does not exist") from None
    except OSError as e:
        raise InvalidInputError(f"cannot read key file {where}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode  # of the file opened, not of whatever the name is now
        if not stat.S_ISREG(mode):
            raise InvalidInputError(f"key file {where} is not a regular file")
        if mode & 0o077:
            raise InvalidInputError(
                f"key file {where} has mode {stat.S_IMODE(mode):04o}; it must be "
                f"accessible by its owner only (chmod 600 {where})")
        data = b""
        while len(data) <= MAX_KEY_FILE_BYTES and (chunk := os.read(fd, 4096)):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidInputError(f"key file {where} is too large to hold a key")
    try:
        return Signer.from_text(data.decode("utf-8"))
    except (UnicodeDecodeError, InvalidInputError) as e:
        reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        raise InvalidInputError(f"key file {where}: {reason}") from None


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
        lines.append(f"{SIGNATURE_PREFIX}{signer.name} {_b64(sig)}\n")
    return text + "\n" + "".join(lines)


def _parse_signature(line: str, number: int) -> tuple[NoteSignature, bytes]:
    """'— <name> <base64>' -> (its fields, the signature without the key id)."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise InvalidInputError(f"malformed note: signature line {number} does not start "
                                "with an em dash and a space")
    name, _, b64 = line[len(SIGNATURE_PREFIX):].partition(" ")
    try:
        check_key_name(name)
    except InvalidInputError as e:
        raise InvalidInputError(f"malformed note: signature line {number}: {e}") from None
    raw = _b64decode(b64, f"malformed note: signature line {number}") if b64 else b""
    if len(raw) < 5:
        raise InvalidInputError(f"malformed note: signature line {number} is too short")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), b64), raw[4:]


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
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
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
        raw = _b64decode(root, "checkpoint root")
        if len(raw) != 32 or _b64(raw) != root:
            raise InvalidInputError("checkpoint root is not the base64 of 32 bytes")
        return cls(origin, int(size), raw, tuple(extensions))

    def sign(self, signers: Sequence[Signer]) -> str:
        """This checkpoint as a signed note."""
        return sign_note(self.to_text(), signers)


def open_checkpoint(note: str | bytes, verifiers: Sequence[Verifier]) -> Checkpoint:
    """Verify a signed checkpoint note (see `open_note`) and parse its text."""
    return Checkpoint.parse(open_note(note, verifiers).text)
