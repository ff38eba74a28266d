"""Extraction on the real GE chest CT series in ../shared/realct (skipped when absent)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from lungslice.features.backbones import Backbone
from lungslice.features.cache import load_features
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import extract_dataset, extract_volume, find_series, load_resampled
from lungslice.features.inputs import InputConfig

REALCT = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct"
# 2.5 mm (source slices shrunk before z-interpolation) and 0.8 mm (resampled first).
NAMES = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm")

pytestmark = [
    pytest.mark.realct,
    pytest.mark.slow,
    pytest.mark.skipif(not REALCT.is_dir(), reason=f"{REALCT} is absent"),
]


def test_real_series_extract_with_provenance(tmp_path: Path, lite0: Backbone) -> None:
    data = tmp_path / "dicom"
    for name in NAMES:
        with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
            tar.extractall(data, filter="data")
    config = FeatureConfig(inputs=InputConfig(size=64), precision="fp32", storage_dtype="float32")
    result = extract_dataset(data, tmp_path / "work", config, backbone=lite0)
    assert len(result.computed) == 2 and not result.failed
    features, slices = load_features(tmp_path / "work", config.key)
    assert np.isfinite(features).all() and len(features) == len(slices)

    for job in find_series(data):
        rows = slices[slices["series_uid"] == job.series_uid]
        uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in job.files}
        assert set(rows["sop_instance_uid"]) <= uids
        z = rows["z_mm"].to_numpy()
        np.testing.assert_allclose(np.diff(z), 1.0, atol=1e-6)
        # Same features as resampling at full resolution first (both orders are linear).
        full = load_resampled(job, config)
        direct = extract_volume(full, lite0, config)
        cached = features[rows.index.to_numpy()]
        cos = (
            (direct * cached).sum(1)
            / np.linalg.norm(direct, axis=1)
            / np.linalg.norm(cached, axis=1)
        )
        assert cos.min() > 0.99, (job.series_uid, cos.min())
        assert len(rows) == full.n_slices
    manifest = pd.read_parquet(result.cache_dir / "manifest.parquet")
    assert sorted(manifest["n_source_slices"]) == [95, 100]
