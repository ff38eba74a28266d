"""load_series on small synthetic series: HU, ordering, every bad-input error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    MPEG2MPML,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from lungslice.dicom.discover import index_tree
from lungslice.dicom.volume import CTVolume, LoadConfig, load_series
from lungslice.errors import (
    ConfigError,
    DicomReadError,
    NoCTSeriesError,
    SeriesGeometryError,
    UnsupportedTransferSyntaxError,
)
from lungslice.testing import body_phantom, write_ct_series

SMALL = {"n_slices": 6, "rows": 16, "columns": 16}


def _hu(n: int = 6, rows: int = 16, columns: int = 16) -> np.ndarray:
    return np.rint(body_phantom(n, rows, columns, seed=1))


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_loads_hu_geometry_and_identity(tmp_path: Path) -> None:
    hu = _hu()
    paths = write_ct_series(tmp_path, hu, spacing=(2.5, 0.7, 0.8), z0=-50.0, patient_id="P1")
    vol = load_series(tmp_path)
    assert isinstance(vol, CTVolume)
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing == (2.5, 0.7, 0.8)
    np.testing.assert_allclose(vol.z_positions, -50.0 + 2.5 * np.arange(6))
    assert vol.sop_instance_uids == tuple(_sop(p) for p in paths)
    assert vol.instance_numbers == (1, 2, 3, 4, 5, 6)
    assert vol.patient_id == "P1"
    assert vol.series_uid == _series_uid(paths[0])
    assert vol.origin == pytest.approx((-7.5 * 0.8, -7.5 * 0.7, -50.0))
    assert vol.info["manufacturer"] == "LUNGSLICE-TESTING"
    assert vol.info["kernel"] == "STANDARD"
    assert vol.info["skipped_files"] == []
    assert vol.info["load_config"]["allow_gaps"] is False


def test_orders_by_position_not_instance_number_or_name(tmp_path: Path) -> None:
    hu = _hu()
    # File names and InstanceNumbers both run against the slice order.
    paths = write_ct_series(
        tmp_path,
        hu,
        file_name="{instance:03d}",
        shuffle_instance_numbers=True,
        z_positions=[10.0, 12.5, 15.0, 17.5, 20.0, 22.5][::-1],
        seed=4,
    )
    vol = load_series([str(p) for p in reversed(paths)])
    np.testing.assert_array_equal(vol.hu, hu[::-1])
    np.testing.assert_allclose(vol.z_positions, [10.0, 12.5, 15.0, 17.5, 20.0, 22.5])
    assert vol.sop_instance_uids == tuple(_sop(p) for p in reversed(paths))


def test_padding_and_out_of_field_become_air(tmp_path: Path) -> None:
    hu = _hu()
    hu[:, :2, :] = -3024  # GE: raw -2000 outside the field of view
    write_ct_series(tmp_path / "tagged", hu, PixelPaddingValue=-2000)
    write_ct_series(tmp_path / "untagged", hu, seed=2)
    for folder in ("tagged", "untagged"):
        vol = load_series(tmp_path / folder)
        assert vol.hu.min() > -1100
        assert np.all(vol.hu[:, :2, :] == -1000.0)
        np.testing.assert_array_equal(vol.hu[:, 2:, :], hu[:, 2:, :])
        assert vol.info["n_air_filled_pixels"] == 6 * 2 * 16


def test_padding_value_inside_hu_range_is_masked_by_value(tmp_path: Path) -> None:
    hu = _hu()
    hu[:, 0, 0] = -1500  # raw -476: a padding value above the out-of-field threshold
    write_ct_series(tmp_path, hu, PixelPaddingValue=-476)
    vol = load_series(tmp_path, config=LoadConfig(air_hu=-1024.0))
    assert np.all(vol.hu[:, 0, 0] == -1024.0)


def test_rescale_slope_and_intercept(tmp_path: Path) -> None:
    hu = _hu()
    write_ct_series(tmp_path, hu, rescale_slope=0.5, rescale_intercept=-1000.0)
    np.testing.assert_array_equal(load_series(tmp_path).hu, hu)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_other_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    hu = _hu(3, 32, 32)  # OpenJPEG cannot encode images as small as 16x16
    write_ct_series(tmp_path, hu, transfer_syntax=syntax)
    vol = load_series(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.info["transfer_syntax"] == syntax


def test_sources_index_and_file_list(tmp_path: Path) -> None:
    hu = _hu()
    a = write_ct_series(tmp_path / "a", hu, patient_id="A")
    write_ct_series(tmp_path / "b", hu + 10, patient_id="B")
    index = index_tree(tmp_path, workers=1)
    uid = _series_uid(a[0])
    vol = load_series(index, series_uid=uid)
    np.testing.assert_array_equal(vol.hu, hu)
    with pytest.raises(NoCTSeriesError, match=r"2 loadable CT series .*pass series_uid='UID'"):
        load_series(index)
    with pytest.raises(NoCTSeriesError, match=r"no series 1\.2\.3"):
        load_series(index, series_uid="1.2.3")
    np.testing.assert_array_equal(load_series(a).hu, hu)


def test_truncated_file(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, **SMALL)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:-100])
    msg = f"{paths[3]}: unreadable: truncated file: PixelData needs {len(data)} bytes, the file "
    with pytest.raises(DicomReadError, match=re.escape(msg) + f"has {len(data) - 100}"):
        load_series(tmp_path)


def test_non_dicom_file_is_recorded_not_fatal(tmp_path: Path) -> None:
    write_ct_series(tmp_path, **SMALL)
    (tmp_path / "notes.xml").write_text("<LidcReadMessage/>")
    vol = load_series(tmp_path)
    assert vol.n_slices == 6
    assert vol.info["skipped_files"] == [
        {"path": str(tmp_path.absolute() / "notes.xml"), "reason": "not DICOM"}
    ]


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, PixelData=lambda i: None if i == 2 else ..., **SMALL)
    msg = (
        f"{paths[2]} (SOPInstanceUID {_sop(paths[2])}) has no PixelData (7FE0,0010); "
        "expected an image - move the file out of the series folder"
    )
    with pytest.raises(SeriesGeometryError, match=re.escape(msg)):
        load_series(tmp_path)


def test_missing_slice(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, **SMALL)
    paths[3].unlink()
    msg = (
        f"step of 5 mm between z=-95 ({paths[2]} (SOPInstanceUID {_sop(paths[2])})) and "
        f"z=-90 ({paths[4]} (SOPInstanceUID {_sop(paths[4])})), expected about 2.5 mm "
        "(gap > 1.5 x median): 1 gap(s) - pass LoadConfig(allow_gaps=True) to load anyway"
    )
    with pytest.raises(SeriesGeometryError, match=re.escape(msg)):
        load_series(tmp_path)
    vol = load_series(tmp_path, config=LoadConfig(allow_gaps=True))
    np.testing.assert_allclose(vol.z_positions, [-100, -97.5, -95, -90, -87.5])
    assert vol.spacing[0] == 2.5
    assert "accepted 1 gap(s) in z (allow_gaps)" in vol.info["decisions"]


def test_irregular_spacing(tmp_path: Path) -> None:
    write_ct_series(tmp_path, z_positions=[0, 2.5, 5.0, 8.0, 10.0, 12.5], **SMALL)
    with pytest.raises(SeriesGeometryError, match=r"step of 3 mm between z=5 .* expected 2\.5 mm"):
        load_series(tmp_path)
    vol = load_series(tmp_path, config=LoadConfig(allow_irregular=True))
    assert vol.n_slices == 6


def test_duplicate_z_keeps_lower_instance_number(tmp_path: Path) -> None:
    hu = _hu(11)
    z = [float(2.5 * i) for i in range(10)] + [7.5]  # the last image repeats z=7.5
    paths = write_ct_series(tmp_path, hu, z_positions=z)
    vol = load_series(tmp_path)
    assert vol.n_slices == 10
    np.testing.assert_array_equal(vol.hu[3], hu[3])  # InstanceNumber 4 kept, 11 dropped
    (dropped,) = vol.info["dropped_duplicates"]
    assert dropped["sop_instance_uid"] == _sop(paths[10])
    assert dropped["instance_number"] == 11
    assert dropped["reason"] == (
        f"duplicate position: z=7.5 mm, kept InstanceNumber 4 (SOPInstanceUID {_sop(paths[3])})"
    )
    with pytest.raises(
        SeriesGeometryError,
        match=re.escape(
            "1 position(s) hold more than one image, first at 7.5 mm: "
            f"{paths[3]}, {paths[10]}; expected one image per position - "
            "pass LoadConfig(duplicates='keep_lower_instance') to keep the lower InstanceNumber"
        ),
    ):
        load_series(tmp_path, config=LoadConfig(duplicates="error"))


def test_many_duplicates_are_an_error(tmp_path: Path) -> None:
    z = [0.0, 0.0, 2.5, 2.5, 5.0, 5.0]
    write_ct_series(tmp_path, z_positions=z, **SMALL)
    with pytest.raises(
        SeriesGeometryError,
        match=r"100% of positions repeat, expected at most 10% - this looks like two acquisitions",
    ):
        load_series(tmp_path)


def test_two_series_interleaved_in_one_folder(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path, file_name="a{index}.dcm", seed=1, **SMALL)
    b = write_ct_series(tmp_path, file_name="b{index}.dcm", seed=2, z0=-98.0, **SMALL)
    ua, ub = _series_uid(a[0]), _series_uid(b[0])
    listed = sorted([ua, ub])
    with pytest.raises(SeriesGeometryError, match=r"holds 2 CT series: ") as info:
        load_series(tmp_path)
    message = str(info.value)
    assert all(f"{u} (CT, 6 files)" in message for u in listed)
    assert message.endswith("expected one - pass series_uid='UID' to choose")
    vol = load_series(tmp_path, series_uid=ub)
    assert vol.series_uid == ub
    assert len(vol.info["skipped_files"]) == 6
    assert vol.info["skipped_files"][0]["reason"] == f"other series {ua}"
    with pytest.raises(SeriesGeometryError, match=r"the files belong to 2 series: "):
        load_series(a + b)


def test_mixed_pixel_spacing(tmp_path: Path) -> None:
    paths = write_ct_series(
        tmp_path, PixelSpacing=lambda i: [0.8, 0.8] if i == 4 else [0.7, 0.7], **SMALL
    )
    msg = (
        f"{paths[4]} (SOPInstanceUID {_sop(paths[4])}) has PixelSpacing [0.8, 0.8], "
        f"expected [0.7, 0.7] like {paths[0]}; move the files of other pixel spacings out of "
        "the series folder"
    )
    with pytest.raises(SeriesGeometryError, match=re.escape(msg)):
        load_series(tmp_path)


def test_mixed_rows_columns(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", **SMALL)
    (other,) = write_ct_series(
        tmp_path / "t",
        n_slices=1,
        rows=8,
        columns=8,
        series_uid=_series_uid(next((tmp_path / "s").iterdir())),
        z0=200.0,
        seed=9,
    )
    shutil.move(other, tmp_path / "s" / "extra.dcm")
    with pytest.raises(SeriesGeometryError, match=r"extra\.dcm .* is 8x8 pixels, expected 16x16"):
        load_series(tmp_path / "s")


def test_tilted_series_refused_or_corrected(tmp_path: Path) -> None:
    angle = np.radians(20)
    sin = np.sin(angle)
    # Row cosine x, column cosine tilted by 20 degrees; the table moves 2 mm a
    # slice along z. A plate lying along the slice normal crosses slice k at
    # row 6 + 2 k sin(20) (1 mm pixels): tilt correction must line it up at row 6.
    rows = np.arange(16.0)[None, :, None]
    centre = 6.0 + 2.0 * np.arange(6)[:, None, None] * sin
    hu = np.rint(-1000.0 + 1000.0 * np.exp(-((rows - centre) ** 2) / (2 * 1.5**2)))
    hu = np.broadcast_to(hu, (6, 16, 16))
    paths = write_ct_series(
        tmp_path,
        hu,
        spacing=(2.0, 1.0, 1.0),
        orientation=(1, 0, 0, 0, np.cos(angle), -sin),
        stack_direction=(0, 0, 1),
        GantryDetectorTilt=20.0,
    )
    msg = (
        "slice positions advance 20.00 degrees off the slice normal (GantryDetectorTilt 20; "
        f"first {paths[0]}); expected stacking along the normal - pass "
        "LoadConfig(tilt='correct') to shear the slices back onto it"
    )
    with pytest.raises(SeriesGeometryError, match=re.escape(msg)):
        load_series(tmp_path)
    vol = load_series(tmp_path, config=LoadConfig(tilt="correct"))
    assert vol.spacing[0] == pytest.approx(2.0 * np.cos(angle))
    shifts = np.array(vol.info["tilt_shifts_px"])
    np.testing.assert_allclose(shifts[:, 0], -2.0 * sin * np.arange(6), atol=1e-6)
    np.testing.assert_allclose(shifts[:, 1], 0.0, atol=1e-9)
    weight = vol.hu[:, :, 8] + 1000.0
    centroid = (weight * np.arange(16.0)).sum(axis=1) / weight.sum(axis=1)
    np.testing.assert_allclose(centroid, 6.0, atol=0.15)
    assert (
        "gantry tilt of 20.00 degrees corrected by shearing slices in-plane"
        in (vol.info["decisions"])
    )


def test_non_axial_series(tmp_path: Path) -> None:
    write_ct_series(tmp_path, orientation=(0, 1, 0, 0, 0, -1), **SMALL)
    with pytest.raises(SeriesGeometryError, match=r"ImageOrientationPatient \[0, 1, 0, 0, 0, -1\]"):
        load_series(tmp_path)
    vol = load_series(tmp_path, config=LoadConfig(require_axial=False))
    assert vol.n_slices == 6


def test_unsupported_transfer_syntax_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.pixels.decoders.base import Decoder

    # lungslice installs pylibjpeg-libjpeg; a machine without it (or gdcm) gets this error.
    assert get_decoder(JPEGLosslessSV1).is_available
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    paths = write_ct_series(tmp_path / "jpeg", transfer_syntax=JPEGLosslessSV1, **SMALL)
    first = min(paths, key=lambda p: p.name)
    msg = (
        f"{first} (SOPInstanceUID {_sop(first)}): pixel data is encoded as JPEG Lossless, "
        "Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]) "
        "(1.2.840.10008.1.2.4.70), which no installed decoder handles; install "
        "pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm"
    )
    with pytest.raises(UnsupportedTransferSyntaxError, match=re.escape(msg)):
        load_series(tmp_path / "jpeg")


def test_transfer_syntax_without_any_decoder(tmp_path: Path) -> None:
    write_ct_series(tmp_path, transfer_syntax=MPEG2MPML, **SMALL)
    with pytest.raises(
        UnsupportedTransferSyntaxError,
        match=r"MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\), which pydicom "
        r"cannot decode; no Python decoder exists for it: convert the files",
    ):
        load_series(tmp_path)


def test_empty_folder_and_no_ct(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        NoCTSeriesError,
        match=re.escape(
            f"{tmp_path / 'empty'}: the folder is empty; expected the DICOM files of one CT series"
        ),
    ):
        load_series(tmp_path / "empty")
    cr = write_ct_series(tmp_path / "cr", modality="CR", n_slices=1, rows=8, columns=8)
    (tmp_path / "cr" / "readme.txt").write_text("hello")
    with pytest.raises(
        NoCTSeriesError,
        match=re.escape(
            f"{tmp_path / 'cr'}: no CT series; found {_series_uid(cr[0])} (CR, 1 files); "
            "1 file(s) skipped: not DICOM; expected the DICOM files of one CT image series"
        ),
    ):
        load_series(tmp_path / "cr")


def test_single_slice_needs_opt_in(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=1, rows=8, columns=8)
    with pytest.raises(SeriesGeometryError, match=r"1 slice\(s\), expected at least 2"):
        load_series(tmp_path)
    vol = load_series(tmp_path, config=LoadConfig(min_slices=1))
    assert vol.spacing[0] == 2.5


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"LoadConfig.tilt must be 'refuse' or 'correct'"):
        LoadConfig(tilt="shear")  # type: ignore[arg-type]


def test_normal_towards_feet_still_stacks_by_patient_z(tmp_path: Path) -> None:
    hu = _hu()
    # Row x column points to the feet; positions still advance up the table.
    write_ct_series(
        tmp_path, hu, orientation=(1, 0, 0, 0, -1, 0), stack_direction=(0, 0, 1), z0=10.0
    )
    vol = load_series(tmp_path)
    np.testing.assert_allclose(vol.z_positions, 10.0 + 2.5 * np.arange(6))
    np.testing.assert_array_equal(vol.hu, hu)
    assert (
        "row x column normal points to the feet: stacked along its reverse"
        in (vol.info["decisions"])
    )


def test_localizer_inside_an_axial_series_is_left_out(tmp_path: Path) -> None:
    paths = write_ct_series(
        tmp_path,
        ImageType=lambda i: ["ORIGINAL", "PRIMARY", "LOCALIZER"] if i == 0 else ...,
        ImageOrientationPatient=lambda i: [0, 1, 0, 0, 0, -1] if i == 0 else ...,
        **SMALL,
    )
    vol = load_series(tmp_path)
    assert vol.n_slices == 5
    (dropped,) = vol.info["dropped_images"]
    assert dropped["path"] == str(paths[0])
    assert dropped["reason"] == "localizer image (ImageType LOCALIZER)"
    assert vol.info["dropped_duplicates"] == []


def test_allocate_receives_the_volume(tmp_path: Path) -> None:
    hu = _hu()
    write_ct_series(tmp_path, hu)
    given: list[np.ndarray] = []

    def allocate(shape: tuple[int, int, int]) -> np.ndarray:
        given.append(np.zeros(shape, np.float32))
        return given[-1]

    vol = load_series(tmp_path, allocate=allocate)
    assert vol.hu is given[0]
    np.testing.assert_array_equal(given[0], hu)
    with pytest.raises(
        ConfigError,
        match=re.escape("allocate returned float64 (6, 16, 16), expected float32 (6, 16, 16)"),
    ):
        load_series(tmp_path, allocate=lambda shape: np.zeros(shape))
