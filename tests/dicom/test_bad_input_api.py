"""Bad input through the Python API: remedies phrased as keyword arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungslice.dicom.discover import index_tree
from lungslice.dicom.geometry import DERIVED_SERIES, LoadConfig
from lungslice.dicom.volume import check_coverage, load_series
from lungslice.dicom.walk import walk_files
from lungslice.errors import CoverageError, HounsfieldError, SeriesGeometryError, render_error
from lungslice.testing import write_ct_series


def test_missing_rescale_is_refused_with_the_keyword(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, RescaleSlope=None, RescaleIntercept=None)
    with pytest.raises(SeriesGeometryError) as info:
        load_series(tmp_path)
    message = str(info.value)
    assert f"{paths[0]} (SOPInstanceUID" in message
    assert "pass LoadConfig(allow_missing_rescale=True) to take the stored values as HU" in message
    assert "add --allow-missing-rescale to take" in render_error(info.value, "cli")
    vol = load_series(tmp_path, config=LoadConfig(allow_missing_rescale=True))
    assert vol.hu.max() > 1000  # stored values, as asked: 1024 too high
    assert any("air outside the body" in w for w in vol.info["warnings"])
    with pytest.raises(HounsfieldError, match=r"reads 24 HU, expected about -1000 HU"):
        load_series(tmp_path, config=LoadConfig(allow_missing_rescale=True, hu_check="refuse"))


def test_plausible_series_has_no_hu_warning(tmp_path: Path) -> None:
    write_ct_series(tmp_path)
    assert load_series(tmp_path, config=LoadConfig(hu_check="refuse")).info["warnings"] == []


def test_coverage(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=2, spacing=(5.0, 0.7, 0.7))
    vol = load_series(tmp_path)
    assert check_coverage(vol, 10.0) == pytest.approx(10.0)
    with pytest.raises(
        CoverageError, match=r"cover 10 mm .* pass LoadConfig\(min_coverage_mm=10\)"
    ):
        check_coverage(vol, 30.0)
    with pytest.raises(CoverageError, match="expected at least 30 mm"):
        load_series(tmp_path, config=LoadConfig(min_coverage_mm=30))


def test_missing_series_uid_grouped_by_folder_and_geometry(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "a", SeriesInstanceUID=None)
    write_ct_series(tmp_path / "b", SeriesInstanceUID=None, patient_id="B", seed=2)
    index = index_tree(tmp_path, workers=1)
    assert len(index.series) == 2 and (index.series["status"] == "ok").all()
    assert set(index.files["series_uid_source"]) == {DERIVED_SERIES}
    uid = str(index.series["series_uid"].iloc[0])
    from_index = load_series(index, series_uid=uid)
    from_folder = load_series(Path(index.files_of(uid)[0]).parent)
    assert from_folder.series_uid == from_index.series_uid == uid
    np.testing.assert_array_equal(from_folder.hu, from_index.hu)
    assert any("no SeriesInstanceUID" in d for d in from_folder.info["decisions"])


def test_walk_follows_folder_links_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "a_link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "up").symlink_to(tmp_path, target_is_directory=True)
    problems: list[tuple[Path, str]] = []
    assert walk_files(tmp_path, problems) == [tmp_path / "real" / "f"]
    assert sorted(p.name for p, _ in problems) == ["a_link", "up"]
    assert all(r.startswith("skipped link: ") for _, r in problems)
