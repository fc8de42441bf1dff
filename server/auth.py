"""API keys: one admin key, any number of user keys, each key with an access scope.

Keys arrive as `Authorization: Bearer <key>`. They are compared in constant time: every
known key is compared (as a sha256 digest, so lengths leak nothing) on every lookup.
Rules (DESIGN, Interface contract): admin routes are refused while no admin key is set,
answer 401 without a valid key and 403 with a user key; inference routes are open while
no user key is configured. A key's scope (sources, licence classes) reaches searches
through the one entry filter (`datastore.filter.SearchFilter.scope`).

Keys file (`SILO_KEYS_FILE`), JSON:
    [{"key": "...", "name": "alice", "sources": ["kjv"], "license_classes": ["pd", "sw"],
      "datastores": ["gcide", "foldoc"]}]

`datastores` names the datastores the key may use (unset: all); a request for another is
a 403, and `"datastores": "all"` in a request means all the key may use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datastore.document import parse_license_class
from datastore.errors import InvalidInputError
from datastore.filter import AccessScope
from server.errors import ApiError


@dataclass(frozen=True)
class Principal:
    """Who is calling: a name for logs and audit, a role, and what they may draw on."""

    name: str
    role: str  # "admin", "user" or "anonymous"
    scope: AccessScope = field(default_factory=AccessScope)
    datastores: frozenset[str] | None = None  # the datastores it may use; None: all

    def __post_init__(self) -> None:
        if self.role not in ("admin", "user", "anonymous"):
            raise ValueError(f"role must be admin, user or anonymous, got {self.role!r}")


ANONYMOUS = Principal("anonymous", "anonymous")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_keys_file(path: Path) -> list[tuple[str, Principal]]:
    """(key, principal) pairs from a keys file; a bad entry names the file and index."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{path}: cannot read the keys file: {e}") from None
    if not isinstance(entries, list):
        raise InvalidInputError(f"{path}: the keys file must hold a JSON list")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) \
                or not entry["key"]:
            raise InvalidInputError(f"{path}[{i}]: each entry needs a non-empty 'key'")
        sources = entry.get("sources")
        classes = entry.get("license_classes")
        stores = entry.get("datastores")
        if stores is not None and (not isinstance(stores, list) or not stores
                                   or not all(isinstance(x, str) and x for x in stores)):
            raise InvalidInputError(f"{path}[{i}]: 'datastores' must be a non-empty list of "
                                    "datastore names")
        try:
            scope = AccessScope(
                frozenset(sources) if sources is not None else None,
                frozenset(parse_license_class(c) for c in classes)
                if classes is not None else None)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"{path}[{i}]: {e}") from None
        out.append((entry["key"], Principal(str(entry.get("name", f"key-{i}")), "user",
                                            scope, None if stores is None else frozenset(stores))))
    return out


class KeyRing:
    """The known keys. `lookup` takes the same time whichever key (if any) matches."""

    def __init__(self, admin_key: str | None, user_keys: Sequence[tuple[str, Principal]]
                 ) -> None:
        self.admin_enabled = bool(admin_key)
        self.open = not user_keys  # no user key configured: inference is open
        self._keys = [(_digest(k), p) for k, p in user_keys]
        if admin_key:
            self._keys.append((_digest(admin_key), Principal("admin", "admin")))

    @classmethod
    def from_settings(cls, admin_key: str | None, api_keys: Sequence[str],
                      keys_file: Path | None) -> KeyRing:
        users = [(k, Principal(f"user-{i}", "user")) for i, k in enumerate(api_keys)]
        if keys_file is not None:
            users += read_keys_file(keys_file)
        return cls(admin_key, users)

    def lookup(self, key: str) -> Principal | None:
        probe = _digest(key)
        found = None
        for digest, principal in self._keys:  # no early exit: constant time in the match
            if hmac.compare_digest(digest, probe):
                found = principal
        return found


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"})


def authorize_user(keys: KeyRing, header: str | None) -> Principal:
    """The caller of an inference route: anyone while the service is open (a key,
    if sent and known, still brings its scope), else a valid key."""
    token = bearer(header)
    principal = keys.lookup(token) if token else None
    if principal is not None:
        return principal
    if keys.open:
        return ANONYMOUS
    raise _unauthorized("a valid API key is required (Authorization: Bearer <key>)")


def authorize_admin(keys: KeyRing, header: str | None) -> Principal:
    """The caller of an admin route: 403 while admin is disabled or for a user key,
    401 without a valid key."""
    if not keys.admin_enabled:
        raise ApiError(403, "the admin API is disabled: set SILO_ADMIN_KEY to enable it",
                       "permission_error", "admin_disabled")
    token = bearer(header)
    principal = keys.lookup(token) if token else None
    if principal is None:
        raise _unauthorized("the admin key is required (Authorization: Bearer <key>)")
    if principal.role != "admin":
        raise ApiError(403, f"key {principal.name!r} is not an admin key",
                       "permission_error", "not_admin")
    return principal
