"""Lung field mask on a tiny synthetic chest (40 x 96 x 96 voxels of 2 mm)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungslice.candidates import LungFieldConfig, lung_field, lung_slices
from lungslice.errors import ConfigError, LungsliceError, NotChestError
from tests.helpers import SPACING, Chest, ball, tube


@pytest.fixture(scope="module")
def mask(lung: np.ndarray) -> np.ndarray:
    return lung


def test_mask_covers_lungs(chest: Chest, mask: np.ndarray) -> None:
    assert mask.shape == chest.hu.shape and mask.dtype == bool
    # slices with a sizeable lung cross-section (the area filter clears the tips)
    big = chest.lungs.sum(axis=(1, 2)) * 4.0 >= 1500.0
    covered = (mask & chest.lungs)[big].sum() / chest.lungs[big].sum()
    assert covered > 0.99


def test_mask_keeps_the_juxtapleural_nodule(chest: Chest, mask: np.ndarray) -> None:
    zc, rc, cc, rad = chest.nodules[1]
    nodule = ball(chest.hu.shape, (zc, rc, cc), rad / SPACING[0])
    assert (nodule & ~chest.lungs).any(), "the nodule must reach into the wall"
    assert mask[nodule].all()
    zc, rc, cc, rad = chest.nodules[0]
    assert mask[ball(chest.hu.shape, (zc, rc, cc), rad / SPACING[0])].all()


def test_mask_excludes_outside_air_and_body(chest: Chest, mask: np.ndarray) -> None:
    assert not (mask & ~chest.body).any()
    dist = ndi.distance_transform_edt(~chest.lungs, sampling=SPACING)
    # box closing (10 mm) and dilation (2 mm) reach at most ~14 mm into the body
    assert not (mask & (dist > 16.0)).any()
    # the mediastinum between the lungs stays out on the middle slices
    assert not mask[15:26, 40:52, 48].any()


def test_lung_slices_above_and_below_are_empty(chest: Chest, mask: np.ndarray) -> None:
    has = lung_slices(mask)
    assert has.shape == (40,)
    assert not has[:3].any() and not has[-3:].any()
    assert has[8:33].all()
    assert not mask[0].any() and not mask[-1].any()
    by_area = lung_slices(mask, SPACING, min_area_mm2=4000.0)
    assert by_area.sum() < has.sum()
    with pytest.raises(ConfigError, match="needs the spacing"):
        lung_slices(mask, min_area_mm2=10.0)


def test_trachea_alone_is_not_lung(chest: Chest) -> None:
    hu = chest.hu.copy()
    # a trachea (9 mm radius) running up from the lungs through the top slices
    hu[tube(hu.shape, np.array([20.0, 30.0, 48.0]), np.array([39.0, 30.0, 48.0]), 4.5)] = -1000
    m = lung_field(hu, SPACING)
    assert not lung_slices(m)[-3:].any()
    assert lung_slices(m)[20]


def test_lungs_cut_by_the_field_of_view_stay_in() -> None:
    # a body wider than the reconstruction circle (inscribed in the image): the
    # circle cuts both lungs at the side and the scanner writes air outside it
    z, r, c = np.ogrid[:30, :96, :96]
    hu = np.full((30, 96, 96), 40.0, dtype=np.float32)
    lungs = np.zeros(hu.shape, dtype=bool)
    for cc in (12, 83):
        lungs |= ((z - 15) / 12.0) ** 2 + ((r - 46) / 22.0) ** 2 + ((c - cc) / 16.0) ** 2 <= 1
    hu[lungs] = -850.0
    outside = ((r - 47.5) ** 2 + (c - 47.5) ** 2 > 47.5**2)[0]
    hu[:, outside] = -1000.0
    assert (lungs & outside[None]).any(), "the circle must cut the lungs"
    lungs &= ~outside[None]
    m = lung_field(hu, SPACING)
    big = lungs.sum(axis=(1, 2)) * 4.0 >= 1500.0
    assert (m & lungs)[big].sum() / lungs[big].sum() > 0.97
    # only the dilation (2 mm) crosses the circle; the air outside is not lung
    assert m[:, outside].mean() < 0.05
    assert not m[:, :8, :8].any() and not m[:, -8:, -8:].any()


def test_no_lung_raises_not_chest() -> None:
    hu = np.full((12, 64, 64), -1000.0, dtype=np.float32)
    _, r, c = np.ogrid[:12, :64, :64]
    hu[:, (((r - 32) / 25.0) ** 2 + ((c - 32) / 28.0) ** 2 <= 1.0)[0]] = 40.0  # soft tissue
    with pytest.raises(NotChestError) as err:
        lung_field(hu, SPACING)
    msg = str(err.value)
    assert "no lung field on any slice" in msg
    assert "(12, 64, 64)" in msg and "HU range -1000 to 40" in msg
    assert "not a chest CT, or not in HU" in msg
    assert isinstance(err.value, LungsliceError)


def test_raw_values_not_in_hu_raise(chest: Chest) -> None:
    raw = chest.hu + 1024.0  # stored values without RescaleIntercept
    with pytest.raises(NotChestError, match="not in HU"):
        lung_field(raw, SPACING)


def test_bad_input_and_config() -> None:
    with pytest.raises(ConfigError, match="closing_mm"):
        LungFieldConfig(closing_mm=-1.0)
    with pytest.raises(ConfigError, match=r"expected a \(slices, rows, columns\) volume"):
        lung_field(np.zeros((4, 4)), SPACING)
    with pytest.raises(ConfigError, match="spacing"):
        lung_field(np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))
