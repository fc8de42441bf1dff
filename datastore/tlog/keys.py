"""Ed25519 keys for signed notes, in the text forms of c2sp.org/signed-note (Go's
golang.org/x/mod/sumdb/note reads and writes the same), and the operator's key file.

    verifier key   <name>+<8 hex key id>+base64(0x01 || 32-byte public key)
    signer key     PRIVATE+KEY+<name>+<8 hex key id>+base64(0x01 || 32-byte seed)
    key id         SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian

The key file holds the signer key text and is readable by its owner only: it is created
0600, never overwritten, and refused when group or others may read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from datastore.errors import ConflictError, InvalidInputError, NotFoundError

ALG_ED25519 = 0x01
MAX_KEY_FILE_BYTES = 4096

# Unicode White_Space, which key names may not contain (Go's unicode.IsSpace)
_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than LF


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


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidInputError(f"{what} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_parts(text: str, what: str) -> tuple[str, int, bytes]:
    """'<name>+<hex id>+<base64 0x01 || 32 bytes>' -> (name, id, 32 key bytes)."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise InvalidInputError(f"{what} must be <name>+<key id>+<key>")
    name, hex_id, encoded = parts
    check_key_name(name)
    if not _HEX8.fullmatch(hex_id):
        raise InvalidInputError(f"{what} for {name}: key id {hex_id!r} is not 8 hex digits")
    raw = b64decode(encoded, f"{what} for {name}: the key")
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
        return f"{self.name}+{self.key_id:08x}+{b64(bytes([ALG_ED25519]) + self.public_key)}"

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
                f"{b64(bytes([ALG_ED25519]) + self.seed)}")

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
