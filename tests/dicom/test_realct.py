"""Integration on the three real GE chest CT series in ../shared/realct (skipped when absent)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from lungslice.dicom.discover import index_tree
from lungslice.dicom.resample import resample
from lungslice.dicom.volume import CTVolume, load_series

REALCT = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct"
NAMES = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm", "chest-ct-ge-petct-4mm")

pytestmark = [
    pytest.mark.realct,
    pytest.mark.slow,
    pytest.mark.skipif(not REALCT.is_dir(), reason=f"{REALCT} is absent"),
]


@pytest.fixture(scope="module")
def realct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("realct")
    for name in NAMES:
        with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
            tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def volumes(realct: Path) -> dict[str, CTVolume]:
    return {name: load_series(realct / name) for name in NAMES}


@pytest.mark.parametrize(
    ("name", "n", "spacing", "syntax"),
    [
        ("chest-ct-gemed-lung-2p5mm", 100, (2.5, 0.898438, 0.898438), "1.2.840.10008.1.2.1"),
        ("chest-ct-ge-pe-0p8mm", 95, (0.800003, 0.644531, 0.644531), "1.2.840.10008.1.2"),
        ("chest-ct-ge-petct-4mm", 99, (4.25, 0.976562, 0.976562), "1.2.840.10008.1.2.1"),
    ],
)
def test_geometry_and_hu(
    volumes: dict[str, CTVolume],
    name: str,
    n: int,
    spacing: tuple[float, float, float],
    syntax: str,
) -> None:
    vol = volumes[name]
    assert vol.shape == (n, 512, 512)
    assert vol.spacing == pytest.approx(spacing, abs=1e-6)
    assert vol.info["transfer_syntax"] == syntax
    assert vol.info["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert np.all(np.diff(vol.z_positions) > 0)
    hu = vol.hu
    # GE's -2000 outside the field of view became air, not -3024 HU.
    assert hu.min() >= -1024
    assert vol.info["n_air_filled_pixels"] > 0
    lung = np.median(hu[(hu >= -950) & (hu < -600)])
    soft = np.median(hu[(hu >= 0) & (hu < 100)])
    assert -920 < lung < -800, lung
    assert 25 < soft < 65, soft


def test_overlap_and_spacing_decisions(volumes: dict[str, CTVolume]) -> None:
    pe = volumes["chest-ct-ge-pe-0p8mm"]
    assert "overlapping slices: thickness 1.25 mm > spacing 0.800003 mm" in pe.info["decisions"]
    petct = volumes["chest-ct-ge-petct-4mm"]
    assert petct.info["slice_thickness"] == 5.0
    assert not any("gap" in d for d in petct.info["decisions"])


def test_matches_simpleitk(realct: Path, volumes: dict[str, CTVolume]) -> None:
    sitk = pytest.importorskip("SimpleITK")
    vol = volumes["chest-ct-gemed-lung-2p5mm"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(vol.info["paths"])  # our slice order
    image = reader.Execute()
    ref = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = ref >= -1024
    np.testing.assert_array_equal(vol.hu[inside], ref[inside])
    assert np.all(vol.hu[~inside] == -1000)
    assert image.GetSpacing()[2] == pytest.approx(vol.spacing[0])


def test_index_and_resample(realct: Path, volumes: dict[str, CTVolume]) -> None:
    index = index_tree(realct, workers=2)
    assert len(index.files) == 294
    assert (index.series["status"] == "ok").all()
    assert sorted(index.series["n_slices"]) == [95, 99, 100]
    vol = volumes["chest-ct-gemed-lung-2p5mm"]
    out = resample(vol, slice_spacing=1.0)
    assert out.n_slices == 248
    assert set(out.nearest_source.tolist()) == set(range(100))
    k = 101  # 101 mm above the first slice: between source slices 40 and 41
    assert out.source_index[k].tolist() == [40, 41]
    assert out.nearest_sop_instance_uid(k) == vol.sop_instance_uids[40]
