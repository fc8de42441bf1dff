"""Documents and their licence classes: the data model shared by every layer.

The licence classes are those of the Open License Corpus: `pd` (public domain, CC0),
`sw` (MIT/BSD/Apache-style software licences), `by` (CC-BY, CC-BY-SA), and the
non-permissive rest (`copyleft`, `restricted`, `unknown`). Only `pd`, `sw` and `by` are
low risk; an unrecognised licence is always `unknown`, never low risk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from datastore.errors import UnknownLicenseError


class LicenseClass(StrEnum):
    PD = "pd"
    SW = "sw"
    BY = "by"
    COPYLEFT = "copyleft"
    RESTRICTED = "restricted"
    UNKNOWN = "unknown"

    @property
    def permissive(self) -> bool:
        return self in PERMISSIVE


PERMISSIVE = frozenset({LicenseClass.PD, LicenseClass.SW, LicenseClass.BY})

# Normalised licence name -> class. Keys are lower-case with spaces, dashes and dots removed
# so that "CC-BY-SA 4.0", "cc_by_sa_4.0" and "ccbysa40" meet.
_LICENSES: dict[str, LicenseClass] = {}
for _cls, _names in {
    LicenseClass.PD: ["public domain", "publicdomain", "pd", "cc0", "cc0-1.0", "unlicense",
                      "pddl", "us government work"],
    LicenseClass.SW: ["mit", "bsd", "bsd-2-clause", "bsd-3-clause", "apache", "apache-2.0",
                      "isc", "zlib", "psf", "psf-2.0", "python-2.0", "wordnet", "x11",
                      "boost", "bsl-1.0", "postgresql", "0bsd", "sw",
                      "permissive (mit/bsd/apache)"],
    LicenseClass.BY: ["cc-by", "cc-by-3.0", "cc-by-4.0", "cc-by-sa", "cc-by-sa-3.0",
                      "cc-by-sa-4.0", "by", "ccby"],
    LicenseClass.COPYLEFT: ["gpl", "gpl-2.0", "gpl-2.0+", "gpl-2.0-or-later", "gpl-3.0",
                            "gpl-3.0+", "gpl-3.0-or-later", "lgpl", "lgpl-2.1", "lgpl-3.0",
                            "agpl-3.0", "gfdl", "gfdl-1.1", "gfdl-1.2", "gfdl-1.3", "mpl-2.0",
                            "epl-2.0", "copyleft"],
    LicenseClass.RESTRICTED: ["cc-by-nc", "cc-by-nc-sa", "cc-by-nd", "cc-by-nc-nd",
                              "proprietary", "all rights reserved", "restricted"],
}.items():
    for _name in _names:
        _LICENSES[re.sub(r"[\s\-_.]", "", _name.lower())] = _cls


def classify_license(license: str) -> LicenseClass:
    """Map an SPDX id or free-text licence name to its class; unknown text gives UNKNOWN."""
    key = re.sub(r"[\s\-_.]", "", license.strip().lower())
    if key in _LICENSES:
        return _LICENSES[key]
    # "GPL-2.0-only", "CC-BY-SA-4.0": drop a trailing version and qualifier. No prefix
    # matching beyond that, so "mitigated terms" can never pass for MIT.
    bare = re.sub(r"(v?\d[\d+]*)?(only|orlater|\+)?$", "", key)
    if bare in _LICENSES:
        return _LICENSES[bare]
    return LicenseClass.UNKNOWN


def parse_license_class(value: str) -> LicenseClass:
    """Parse a licence class name (`pd`, `sw`, ...); anything else is an error."""
    try:
        return LicenseClass(value.strip().lower())
    except ValueError:
        allowed = ", ".join(c.value for c in LicenseClass)
        raise UnknownLicenseError(
            f"unknown licence class {value!r}; expected one of {allowed}"
        ) from None


def parse_policy(spec: str | Iterable[str]) -> frozenset[LicenseClass]:
    """Parse a licence policy such as "pd,sw" (or a list of names) into a set of classes.

    "permissive" stands for pd,sw,by and "all" for every class.
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    classes: set[LicenseClass] = set()
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if name == "all":
            classes.update(LicenseClass)
        elif name == "permissive":
            classes.update(PERMISSIVE)
        else:
            classes.add(parse_license_class(name))
    if not classes:
        raise UnknownLicenseError(f"empty licence policy {spec!r}")
    return frozenset(classes)


@dataclass(frozen=True)
class Document:
    """One corpus document: the unit of licensing, opt-out and attribution."""

    doc_id: str
    text: str
    license: str
    license_class: LicenseClass
    source: str
    url: str | None = None
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, str | None]:
        """The corpus line form: {"id", "text", "license", "license_class", "source", "url"}."""
        return {
            "id": self.doc_id,
            "text": self.text,
            "license": self.license,
            "license_class": self.license_class.value,
            "source": self.source,
            "url": self.url,
        }
