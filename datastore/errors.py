"""The one exception hierarchy of the library.

It lives in the lowest layer so that `datastore`, `silo` and `server` share it
(imports run server -> silo -> datastore). The server maps these to HTTP errors in
one place; the CLI prints their message without a traceback.

    SiloError
    ├── InvalidInputError           bad user input (HTTP 400)
    │   ├── CorpusFormatError       a corpus line that cannot be read (file:line)
    │   ├── UnknownLicenseError     a licence string or class that is not known
    │   └── InvalidSelectorError    an opt-out or filter selector that makes no sense
    ├── NotFoundError               a document, datastore or model that does not exist (404)
    ├── ConflictError               an id that already exists (409)
    │   └── WriterBusyError         another process is writing the datastore folder
    ├── ModelMismatchError          datastore keys made by another model (409)
    ├── CorruptDatastoreError       a checksum or manifest that does not verify
    ├── UnavailableError            a datastore dependency that cannot be reached or
    │                               searched now (503; the request is never answered
    │                               without its filter)
    └── CapacityError               queue full or limit reached (429/503)
"""

from __future__ import annotations


class SiloError(Exception):
    """Root of every error the library raises on purpose."""


class InvalidInputError(SiloError, ValueError):
    """The caller gave input that cannot be used."""


class CorpusFormatError(InvalidInputError):
    """A corpus line is malformed; the message names the file and the line."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}")


class UnknownLicenseError(InvalidInputError):
    """A licence or licence class that the classifier does not know."""


class InvalidSelectorError(InvalidInputError):
    """A selector (doc ids, source, url prefix, filter) that is empty or malformed."""


class NotFoundError(SiloError, KeyError):
    """A named thing does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain
        return str(self.args[0]) if self.args else ""


class ConflictError(SiloError):
    """The thing being created already exists, or the state it changes moved."""


class WriterBusyError(ConflictError):
    """Another process holds the datastore folder's writer lock; nothing was written."""


class ModelMismatchError(SiloError):
    """A datastore was built with another model than the one loading it."""


class CorruptDatastoreError(SiloError):
    """A datastore file is missing, truncated or fails its checksum."""


class UnavailableError(SiloError):
    """A datastore dependency (a database, a search server, an index file) failed or
    cannot be reached now; the request fails rather than go unfiltered. Retry later."""


class CapacityError(SiloError):
    """The service is at capacity; retry later."""
