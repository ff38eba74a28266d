"""Calibration figures: exact on a constructed volume; phantom vs the real series when present."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, render
from lungslice.phantom.calibrate import figures, read_folder_hu
from lungslice.phantom.preview import series_preview

REALCT = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct"


def _constructed(seed: int = 0) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    body = ((xx - 64) / 55.0) ** 2 + ((yy - 64) / 40.0) ** 2 < 1
    lungs = (((np.abs(xx - 64) - 24) / 16.0) ** 2 + ((yy - 64) / 26.0) ** 2) < 1
    inner = (((np.abs(xx - 64) - 24) / 13.0) ** 2 + ((yy - 64) / 22.0) ** 2) < 1
    vessels = inner & ((xx % 9 == 0) & (yy % 9 == 0))
    vol = np.where(body, 40.0, -1000.0)[None].repeat(6, axis=0)
    vol = vol + np.where(body, rng.normal(0, 20, vol.shape), rng.normal(0, 5, vol.shape))
    vol[:, lungs] = -850.0
    vol[:, vessels] = 40.0
    return vol.astype(np.float32), float(vessels.sum() / lungs.sum())


def test_figures_recover_constructed_noise_and_vessel_fraction() -> None:
    vol, fraction = _constructed()
    f = figures(vol)
    assert f.lung_slices == 6
    assert f.noise_soft_tissue == pytest.approx(20.0, rel=0.1)
    assert f.noise_air == pytest.approx(5.0, rel=0.1)
    assert f.lung_above_minus500 == pytest.approx(fraction, rel=1e-6)
    assert f.lung_percentiles["p50"] == -850.0
    assert sum(f.lung_histogram) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.realct
def test_phantom_lung_field_is_close_to_real_chest_ct(tmp_path: Path, one_nodule: LidcScan) -> None:
    archive = REALCT / "chest-ct-gemed-lung-2p5mm.tar.xz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    real_hu, _ = read_folder_hu(folder)
    real = figures(real_hu)
    phantom = figures(render(one_nodule, PhantomConfig(seed=0, kernel="lung")).hu)
    # same kernel family: lung-field median within 40 HU, vessel fraction within 2x,
    # soft-tissue noise within 25 %
    assert abs(phantom.lung_percentiles["p50"] - real.lung_percentiles["p50"]) < 40
    assert 0.5 < phantom.lung_above_minus500 / real.lung_above_minus500 < 2.0
    assert phantom.noise_soft_tissue == pytest.approx(real.noise_soft_tissue, rel=0.25)
    png = series_preview(folder, tmp_path / "real.png", n_panels=4)
    assert 0 < png.stat().st_size < 500_000
