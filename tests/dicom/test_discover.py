"""index_tree: every file gets a row, every series a status, on LIDC-like and broken trees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import JPEGLosslessSV1

from lungslice.dicom import discover
from lungslice.dicom.discover import (
    FILE_COLUMNS,
    SERIES_COLUMNS,
    DicomIndex,
    index_tree,
    read_index,
)
from lungslice.dicom.volume import LoadConfig
from lungslice.errors import DicomReadError
from lungslice.testing import write_ct_series

SMALL = {"n_slices": 5, "rows": 8, "columns": 8}


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _reasons(index: DicomIndex) -> dict[str, str | None]:
    return {
        Path(p).name: r for p, r in zip(index.files["path"], index.files["reason"], strict=True)
    }


@pytest.fixture
def lidc_tree(tmp_path: Path) -> Path:
    """Two LIDC-IDRI patients: old (UID folders) and new (date/number folders) layout."""
    root = tmp_path / "LIDC-IDRI"
    old = root / "LIDC-IDRI-0001" / "1.3.6.1.4.1.14519.5.2.1.6279" / "1.3.6.1.4.1.14519.5.2.1.6280"
    write_ct_series(old, patient_id="LIDC-IDRI-0001", file_name="{index:06d}.dcm", **SMALL)
    (old / "069.xml").write_text("<?xml version='1.0'?><LidcReadMessage/>")
    study = root / "LIDC-IDRI-0002" / "01-01-2000-NA-30178"
    write_ct_series(
        study / "3000566.000000-NA-03192",
        patient_id="LIDC-IDRI-0002",
        file_name="1-{index:03d}.dcm",
        shuffle_instance_numbers=True,
        seed=2,
        **SMALL,
    )
    write_ct_series(
        study / "3000923.000000-NA-62357",
        patient_id="LIDC-IDRI-0002",
        modality="CR",
        n_slices=2,
        rows=8,
        columns=8,
        file_name="1-{index:02d}",  # no .dcm suffix
        seed=3,
    )
    return root


def test_lidc_layout(lidc_tree: Path) -> None:
    index = index_tree(lidc_tree, workers=1)
    assert list(index.files.columns) == list(FILE_COLUMNS)
    assert list(index.series.columns) == list(SERIES_COLUMNS)
    assert len(index.files) == _count_files(lidc_tree) == 13
    reasons = _reasons(index)
    assert reasons["069.xml"] == "not DICOM"
    assert reasons["1-00"] == reasons["1-01"] == "modality CR"
    assert (index.files["status"] == "used").sum() == 10
    ct = index.ct_series()
    assert sorted(ct["patient_id"]) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    row = ct.iloc[0]
    assert row["n_files"] == row["n_slices"] == 5
    assert (row["rows"], row["columns"]) == (8, 8)
    assert list(row["pixel_spacing"]) == [0.7, 0.7]
    assert row["slice_spacing"] == 2.5
    assert (row["z_min"], row["z_max"]) == (-100.0, -90.0)
    assert row["manufacturer"] == "LUNGSLICE-TESTING"
    assert row["transfer_syntax"] == "1.2.840.10008.1.2.1"
    cr = index.series[index.series["modality"] == "CR"].iloc[0]
    assert (cr["status"], cr["reason"], cr["n_files"]) == ("rejected", "modality CR", 2)
    assert index.summary() == {
        "files": 13,
        "files_used": 10,
        "files_skipped": {"not DICOM": 1, "modality CR": 2},
        "series": 3,
        "series_ok": 2,
        "series_rejected": {"modality CR": 1},
    }
    uid = str(ct.iloc[1]["series_uid"])
    files = index.files_of(uid)
    assert [p.name for p in files] == [f"1-{i:03d}.dcm" for i in range(5)]


def test_write_and_read_back(lidc_tree: Path, tmp_path: Path) -> None:
    index = index_tree(lidc_tree, workers=1, config=LoadConfig(allow_gaps=True))
    out = index.write(tmp_path / "idx")
    files = pd.read_parquet(out / "files.parquet")
    assert len(files) == 13
    meta = json.loads((out / "index.json").read_text())
    assert meta["config"]["allow_gaps"] is True
    assert meta["summary"]["series_ok"] == 2
    assert "pydicom" in meta["versions"]
    again = read_index(out)
    assert again.config == LoadConfig(allow_gaps=True)
    assert again.root == lidc_tree.resolve()
    pd.testing.assert_frame_equal(again.files, index.files)
    assert again.series["series_uid"].tolist() == index.series["series_uid"].tolist()
    with pytest.raises(DicomReadError, match=r"no files\.parquet; expected the output of"):
        read_index(tmp_path / "nothing")


@pytest.mark.slow
@pytest.mark.parametrize("other_thread", [False, True])  # fork, or forkserver beside threads
def test_parallel_matches_serial(
    lidc_tree: Path, monkeypatch: pytest.MonkeyPatch, other_thread: bool
) -> None:
    import threading

    serial = index_tree(lidc_tree, workers=1)
    monkeypatch.setattr(discover, "_PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(discover, "_CHUNK", 4)
    calls: list[tuple[int, int]] = []
    stop = threading.Event()
    if other_thread:
        threading.Thread(target=stop.wait, daemon=True).start()
    try:
        threaded = threading.active_count() > 1  # other tests may have left threads
        assert discover._context().get_start_method() == ("forkserver" if threaded else "fork")
        parallel = index_tree(
            lidc_tree, workers=2, progress=lambda d, t, label="": calls.append((d, t))
        )
    finally:
        stop.set()
    pd.testing.assert_frame_equal(serial.files, parallel.files)
    pd.testing.assert_frame_equal(serial.series, parallel.series)
    assert calls[0] == (0, 13) and calls[-1] == (13, 13)


def test_dicomdir_tree_and_copies(tmp_path: Path) -> None:
    src = write_ct_series(tmp_path / "src", **SMALL)
    fs = FileSet()
    for p in src:
        fs.add(p)
    fs.write(tmp_path / "media")
    # A second copy of one image: same SOPInstanceUID.
    shutil.copy(src[0], tmp_path / "media" / "copy.dcm")
    index = index_tree(tmp_path / "media", workers=1)
    assert len(index.files) == _count_files(tmp_path / "media") == 7
    reasons = _reasons(index)
    assert reasons["DICOMDIR"] == "DICOMDIR"
    # Files are visited in sorted order: the copy at the top comes first.
    copies = [r for r in reasons.values() if isinstance(r, str) and r.startswith("duplicate SOP")]
    assert copies == [f"duplicate SOPInstanceUID: same as {tmp_path / 'media' / 'copy.dcm'}"]
    (row,) = index.series.itertuples()
    assert (row.status, row.n_files, row.n_slices) == ("ok", 6, 5)
    from lungslice.dicom.volume import load_series

    vol = load_series(tmp_path / "media")
    assert vol.n_slices == 5
    skipped = {Path(s["path"]).name: s["reason"] for s in vol.info["skipped_files"]}
    assert skipped["DICOMDIR"] == "DICOMDIR"
    assert len(skipped) == 2  # and one of the two copies


@pytest.fixture
def broken_tree(tmp_path: Path) -> Path:
    """One folder per problem the issue lists."""
    root = tmp_path / "broken"
    t = write_ct_series(root / "truncated", seed=1, **SMALL)
    t[2].write_bytes(t[2].read_bytes()[:-50])
    (root / "notdicom").mkdir(parents=True)
    (root / "notdicom" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a dicom")
    write_ct_series(root / "nopixels", seed=2, PixelData=lambda i: None if i == 1 else ..., **SMALL)
    m = write_ct_series(root / "missing", seed=3, **SMALL)
    m[2].unlink()
    write_ct_series(root / "dupz", seed=4, z_positions=[0, 2.5, 5, 5, 7.5], **SMALL)
    write_ct_series(root / "two", seed=5, file_name="a{index}.dcm", **SMALL)
    write_ct_series(root / "two", seed=6, file_name="b{index}.dcm", **SMALL)
    write_ct_series(
        root / "spacing", seed=7, PixelSpacing=lambda i: [0.9, 0.9] if i == 3 else ..., **SMALL
    )
    write_ct_series(
        root / "tilted",
        seed=8,
        orientation=(1, 0, 0, 0, 0.9659258, -0.2588190),
        stack_direction=(0, 0, 1),
        **SMALL,
    )
    write_ct_series(root / "jpeg", seed=9, transfer_syntax=JPEGLosslessSV1, **SMALL)
    (root / "empty").mkdir()
    return root


def test_bad_input_is_accounted_for(broken_tree: Path) -> None:
    index = index_tree(broken_tree, workers=1)
    files = index.files
    assert len(files) == _count_files(broken_tree) == 45
    by_folder = {
        folder: files[files["path"].str.contains(f"/{folder}/")] for folder in
        ("truncated", "notdicom", "nopixels", "missing", "dupz", "two", "spacing", "tilted", "jpeg")
    }  # fmt: skip
    trunc = by_folder["truncated"]
    bad = trunc[trunc["path"].str.endswith("0002.dcm")].iloc[0]
    assert bad["status"] == "skipped"
    assert bad["reason"].startswith("unreadable: truncated file: PixelData needs ")
    # Its header still names the series, which is rejected like load_series would.
    assert bad["series_uid"] == trunc["series_uid"].iloc[0]
    assert by_folder["notdicom"]["reason"].tolist() == ["not DICOM"]

    series = index.series.set_index("series_uid")

    def series_reason(folder: str) -> str:
        uids = by_folder[folder]["series_uid"].dropna().unique()
        assert len(uids) == 1
        return str(series.loc[uids[0], "reason"])

    assert series_reason("truncated") == f"unreadable file: 1 file(s), first {bad['path']}"
    assert set(trunc["reason"]) == {bad["reason"], "series rejected: unreadable file"}
    assert series_reason("nopixels").startswith("no pixel data: ")
    assert series_reason("missing").startswith("missing slices: ")
    assert series_reason("spacing").startswith("mixed pixel spacing: ")
    assert series_reason("tilted").startswith("gantry tilt: slice positions advance 15.00 degrees")
    assert by_folder["nopixels"]["reason"].unique().tolist() == ["series rejected: no pixel data"]
    dupz = by_folder["dupz"]
    assert series.loc[dupz["series_uid"].iloc[0], "status"] == "rejected"  # 1 of 4 positions
    two = by_folder["two"]
    assert two["series_uid"].nunique() == 2
    assert set(series.loc[two["series_uid"].unique(), "status"]) == {"ok"}
    jpeg = series.loc[by_folder["jpeg"]["series_uid"].iloc[0]]
    # Headers are fine; the decoder is checked when loading.
    assert (jpeg["status"], jpeg["transfer_syntax"]) == ("ok", JPEGLosslessSV1)
    assert index.summary()["series_rejected"] == {
        "unreadable file": 1,
        "missing slices": 1,
        "no pixel data": 1,
        "mixed pixel spacing": 1,
        "gantry tilt": 1,
        "duplicate positions": 1,
    }


def test_damaged_slice_fails_loading_from_the_index_too(tmp_path: Path) -> None:
    from lungslice.dicom.volume import load_series

    paths = write_ct_series(tmp_path, **SMALL)
    paths[4].write_bytes(paths[4].read_bytes()[:-10])  # the top slice: no gap to notice
    index = index_tree(tmp_path, workers=1)
    (row,) = index.series.itertuples()
    assert row.status == "rejected"
    assert len(index.files_of(row.series_uid)) == 5
    with pytest.raises(DicomReadError, match=r"0004\.dcm: unreadable: truncated file: "):
        load_series(index, series_uid=row.series_uid)


def test_duplicate_z_like_lidc_is_ok_and_recorded(tmp_path: Path) -> None:
    z = [float(2.5 * i) for i in range(12)] + [5.0]
    paths = write_ct_series(tmp_path, z_positions=z, n_slices=13, rows=8, columns=8)
    index = index_tree(tmp_path, workers=1)
    (row,) = index.series.itertuples()
    assert (row.status, row.n_files, row.n_slices) == ("ok", 13, 12)
    reasons = _reasons(index)
    assert reasons[paths[12].name].startswith("duplicate position: z=5 mm, kept InstanceNumber 3")
    assert len(index.files_of(row.series_uid)) == 13
    assert index.summary()["files_skipped"] == {"duplicate position": 1}


def test_empty_and_missing_root(tmp_path: Path) -> None:
    index = index_tree(tmp_path, workers=1)
    assert len(index.files) == 0 and len(index.series) == 0
    assert list(index.series.columns) == list(SERIES_COLUMNS)
    assert index.summary()["files"] == 0
    with pytest.raises(DicomReadError, match=r"nowhere: no such file or folder"):
        index_tree(tmp_path / "nowhere")
    with pytest.raises(KeyError, match=r"series 1\.2 is not in the index"):
        index.files_of("1.2")


def test_single_file_and_uid_of_written(tmp_path: Path) -> None:
    (p,) = write_ct_series(tmp_path, n_slices=1, rows=8, columns=8)
    index = index_tree(p, workers=1)
    assert index.files["series_uid"].tolist() == [_uid(p)]
    assert index.series["reason"].iloc[0].startswith("too few slices: ")


def test_unlistable_folder_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    write_ct_series(tmp_path / "ok", **SMALL)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.dcm").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path: str) -> object:  # tests run as root: simulate a permission error
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    index = index_tree(tmp_path, workers=1)
    locked = index.files[index.files["path"] == str(tmp_path / "locked")]
    assert locked["reason"].tolist() == ["unreadable folder: Permission denied"]
    assert index.summary()["files_skipped"] == {"unreadable folder": 1}
    from lungslice.dicom.volume import load_series

    with pytest.raises(
        DicomReadError,
        match=r"locked: unreadable folder: Permission denied; its files cannot be accounted for",
    ):
        load_series(tmp_path)
