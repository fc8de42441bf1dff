import pytest

from datastore.document import (
    PERMISSIVE,
    LicenseClass,
    classify_license,
    parse_license_class,
    parse_policy,
)
from datastore.errors import UnknownLicenseError


@pytest.mark.parametrize(
    ("license", "expected"),
    [
        ("Public Domain", LicenseClass.PD),
        ("CC0-1.0", LicenseClass.PD),
        ("MIT", LicenseClass.SW),
        ("Apache 2.0", LicenseClass.SW),
        ("PSF-2.0", LicenseClass.SW),
        ("WordNet", LicenseClass.SW),
        ("CC-BY-SA-4.0", LicenseClass.BY),
        ("GPL-2.0-or-later", LicenseClass.COPYLEFT),
        ("GPL-3.0-only", LicenseClass.COPYLEFT),
        ("GFDL-1.1", LicenseClass.COPYLEFT),
        ("CC-BY-NC-4.0", LicenseClass.RESTRICTED),
        ("All Rights Reserved", LicenseClass.RESTRICTED),
    ],
)
def test_known_licences_map_to_their_class(license: str, expected: LicenseClass) -> None:
    assert classify_license(license) is expected


@pytest.mark.parametrize("license", ["mitigated terms", "pdx", "bsdish", "", "my own licence"])
def test_unknown_licence_is_never_low_risk(license: str) -> None:
    cls = classify_license(license)
    assert cls is LicenseClass.UNKNOWN
    assert cls not in PERMISSIVE


def test_policy_parsing() -> None:
    assert parse_policy("pd,sw") == {LicenseClass.PD, LicenseClass.SW}
    assert parse_policy("permissive") == PERMISSIVE
    assert parse_policy(["all"]) == set(LicenseClass)
    with pytest.raises(UnknownLicenseError, match="unknown licence class 'gpl'"):
        parse_policy("pd,gpl")
    with pytest.raises(UnknownLicenseError, match="empty"):
        parse_policy(" , ")
    assert parse_license_class(" SW ") is LicenseClass.SW
