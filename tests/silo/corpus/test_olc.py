import json
from pathlib import Path

import pytest

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError
from silo.corpus.olc import OLC_CONFIGS, config_license, olc_documents


def test_every_config_maps_to_a_low_risk_class() -> None:
    assert len(OLC_CONFIGS) == 16
    classes = {c: config_license(c)[1] for c in OLC_CONFIGS}
    assert classes["pd_law"] is LicenseClass.PD
    assert classes["sw_github"] is LicenseClass.SW
    assert classes["ccby_wikipedia"] is LicenseClass.BY
    with pytest.raises(InvalidInputError, match="licence prefix"):
        config_license("gpl_stuff")


def test_reads_a_local_folder_with_the_hub_layout(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pd_law").mkdir()
    pq.write_table(
        pa.table({"text": ["Be it enacted.", "", "Section 2."], "id": ["a", "b", "c"]}),
        tmp_path / "pd_law" / "train-0.parquet",
    )
    (tmp_path / "sw_github").mkdir()
    with open(tmp_path / "sw_github" / "train.jsonl", "w") as fh:
        for i in range(3):
            fh.write(json.dumps({"text": f"print({i})"}) + "\n")

    law = list(olc_documents("pd_law", repo=str(tmp_path), streaming=False))
    assert [d.doc_id for d in law] == ["olc/pd_law/a", "olc/pd_law/c"]  # empty text skipped
    assert {(d.license_class, d.source) for d in law} == {(LicenseClass.PD, "law")}
    code = list(olc_documents("sw_github", repo=str(tmp_path), limit=2))
    assert [d.text for d in code] == ["print(0)", "print(1)"]
    assert code[0].license_class is LicenseClass.SW
