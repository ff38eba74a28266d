"""Extraction: determinism, the per-series cache, provenance, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungslice.errors import ConfigError, FeatureError
from lungslice.features.backbones import Backbone
from lungslice.features.cache import (
    SLICE_COLUMNS,
    FeatureCache,
    load_features,
    read_series_metadata,
)
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import (
    extract_dataset,
    extract_series,
    extract_volume,
    find_series,
    iter_input_batches,
    load_resampled,
    make_runner,
    resolve_loader,
)
from lungslice.features.inputs import InputConfig, make_inputs
from lungslice.testing import write_ct_series

# Small inputs keep the CPU time of these tests low; the numbers are still real.
CONFIG = FeatureConfig(inputs=InputConfig(size=64), batch_size=8)


def write_dataset(root: Path, n_series: int = 3) -> list[str]:
    """``n_series`` tiny CT series of 6 slices at 2.5 mm (-> 13 slices at 1 mm)."""
    uids = []
    for i in range(n_series):
        patient = f"P{i // 2 + 1}"
        paths = write_ct_series(
            root / patient / f"s{i}", n_slices=6, rows=48, columns=48, patient_id=patient, seed=i
        )
        import pydicom

        uids.append(str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID))
    return uids


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("dicom")
    return root, write_dataset(root)


def test_extract_volume_is_deterministic(dataset: tuple[Path, list[str]], lite0: Backbone) -> None:
    root, _ = dataset
    job = next(j for j in find_series(root) if j.rejected is None)
    rv = load_resampled(job, CONFIG)
    runner = make_runner(CONFIG, lite0)
    a = extract_volume(rv, runner, CONFIG)
    b = extract_volume(rv, runner, CONFIG)
    assert a.shape == (rv.n_slices, 1280) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # A different batch split gives the same vectors (to rounding).
    c = extract_volume(rv, runner, CONFIG.replace(batch_size=5))
    np.testing.assert_allclose(c, a, rtol=0, atol=0.02 * np.abs(a).max())


def test_25d_batches_see_their_neighbours() -> None:
    hu = np.random.default_rng(0).normal(-500, 300, (7, 32, 32)).astype(np.float32)
    config = CONFIG.replace(inputs=InputConfig(mode="2.5d", size=32), batch_size=3)
    data = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    whole = make_inputs(hu, config.inputs, data)
    batched = np.concatenate([x.numpy() for x in iter_input_batches(hu, config, data)])
    np.testing.assert_array_equal(batched, whole.numpy())


def test_extract_dataset_writes_the_cache(
    tmp_path: Path, dataset: tuple[Path, list[str]], lite0: Backbone
) -> None:
    root, uids = dataset
    result = extract_dataset(root, tmp_path, CONFIG, backbone=lite0)
    key_dir = tmp_path / "features" / CONFIG.key
    assert result.cache_dir == key_dir
    assert sorted(result.computed) == sorted(uids) and not result.reused and not result.failed

    manifest = pd.read_parquet(key_dir / "manifest.parquet")
    assert sorted(manifest["series_uid"]) == sorted(uids)
    assert (manifest["status"] == "done").all()
    assert (manifest["n_source_slices"] == 6).all() and (manifest["n_slices"] == 13).all()
    assert (manifest["model_s"] > 0).all()

    config = json.loads((key_dir / "config.json").read_text())
    assert config["key"] == CONFIG.key
    assert config["weights_id"] == lite0.weights_id
    assert config["config"]["backbone"] == "efficientnet_lite0"
    assert config["backbone"]["layers"] == ["head"]
    assert config["input_size"] == 64
    assert config["versions"]["torch"]

    for uid in uids:
        feats = np.load(key_dir / f"{uid}.npy")
        assert feats.shape == (13, 1280) and feats.dtype == np.float16
        table = pd.read_parquet(key_dir / f"{uid}.slices.parquet")
        assert tuple(table.columns) == SLICE_COLUMNS
        assert table["slice_index"].tolist() == list(range(13))
        np.testing.assert_allclose(np.diff(table["z_mm"]), 1.0)
        assert table["sop_instance_uid"].nunique() == 6  # every source slice is nearest to some
        meta = read_series_metadata(key_dir / f"{uid}.slices.parquet")
        assert meta["key"] == CONFIG.key and meta["weights_id"] == lite0.weights_id
        assert meta["layers"] == ["head"] and meta["inputs"]["mode"] == "windows"

    features, slices = load_features(tmp_path, CONFIG.key)
    assert features.shape == (39, 1280)
    assert list(slices["series_uid"].drop_duplicates()) == list(manifest["series_uid"])
    first = slices["series_uid"] == manifest["series_uid"][0]
    np.testing.assert_array_equal(
        features[first.to_numpy()], np.load(key_dir / f"{manifest['series_uid'][0]}.npy")
    )


def test_cached_features_match_extract_volume_on_full_resolution(
    tmp_path: Path, dataset: tuple[Path, list[str]], lite0: Backbone
) -> None:
    # The dataset path shrinks source slices before z-interpolation; both orders agree.
    root, _ = dataset
    config = CONFIG.replace(precision="fp32", storage_dtype="float32")
    extract_dataset(root, tmp_path, config, backbone=lite0)
    job = next(j for j in find_series(root) if j.rejected is None)
    full = load_resampled(job, config)
    small = load_resampled(job, config, size=64)
    assert full.hu.shape[1:] == (48, 48) and small.hu.shape[1:] == (64, 64)
    np.testing.assert_array_equal(small.nearest_source, full.nearest_source)
    direct = extract_volume(full, lite0, config)
    cached = np.load(tmp_path / "features" / config.key / f"{job.series_uid}.npy")
    cos = (direct * cached).sum(1) / np.linalg.norm(direct, axis=1) / np.linalg.norm(cached, axis=1)
    assert cos.min() > 0.999


def test_loader_auto_is_inline_on_the_cpu() -> None:
    assert resolve_loader("auto", "cpu") == "inline"
    assert resolve_loader("process", "cpu") == "process"
    with pytest.raises(ConfigError, match="loader: expected 'auto', 'inline', 'thread' or"):
        resolve_loader("fork", "cpu")


@pytest.mark.parametrize("loader", ["inline", pytest.param("process", marks=pytest.mark.slow)])
def test_loaders_give_the_same_features(
    tmp_path: Path, dataset: tuple[Path, list[str]], lite0: Backbone, loader: str
) -> None:
    root, uids = dataset
    config = CONFIG.replace(precision="fp32")
    extract_dataset(root, tmp_path / "t", config, backbone=lite0, loader="thread")
    result = extract_dataset(root, tmp_path / "o", config, backbone=lite0, loader=loader)
    assert sorted(result.computed) == sorted(uids)
    a, sa = load_features(tmp_path / "t", config.key)
    b, sb = load_features(tmp_path / "o", config.key)
    np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(sa, sb)


def test_rerun_recomputes_nothing_and_new_settings_get_a_new_folder(
    tmp_path: Path, dataset: tuple[Path, list[str]], lite0: Backbone
) -> None:
    root, uids = dataset
    extract_dataset(root, tmp_path, CONFIG, backbone=lite0)
    key_dir = tmp_path / "features" / CONFIG.key
    stamps = {p.name: p.stat().st_mtime_ns for p in key_dir.glob("*.npy")}
    again = extract_dataset(root, tmp_path, CONFIG, backbone=lite0)
    assert again.computed == [] and sorted(again.reused) == sorted(uids)
    assert {p.name: p.stat().st_mtime_ns for p in key_dir.glob("*.npy")} == stamps

    other = CONFIG.replace(inputs=InputConfig(mode="2.5d", size=64))
    result = extract_dataset(root, tmp_path, other, backbone=lite0)
    assert result.cache_dir.name == other.key != CONFIG.key
    assert len(result.computed) == 3


def test_failed_and_rejected_series_are_recorded(tmp_path: Path, lite0: Backbone) -> None:
    root = tmp_path / "dicom"
    good = write_dataset(root, n_series=1)
    # Headers fine, pixels undecodable (raw bytes under a JPEG syntax): fails when loading.
    write_ct_series(
        root / "P8",
        n_slices=6,
        rows=48,
        columns=48,
        patient_id="P8",
        seed=8,
        transfer_syntax="1.2.840.10008.1.2.4.50",
    )
    # A slice without pixels: the index rejects the series.
    write_ct_series(
        root / "P9",
        n_slices=6,
        rows=48,
        columns=48,
        patient_id="P9",
        seed=9,
        PixelData=lambda i: None if i == 2 else ...,
    )
    jobs = {j.patient_id: j for j in find_series(root)}
    broken, rejected = jobs["P8"], jobs["P9"]
    assert broken.rejected is None and rejected.rejected
    with pytest.raises(
        FeatureError,
        match=rf"(?s)series {broken.series_uid} \(patient P8\) failed: .*could not decode JPEG "
        r"Baseline.*\(use --keep-going to record failures and go on\)",
    ):
        extract_dataset(root, tmp_path / "w", CONFIG, backbone=lite0)
    result = extract_dataset(root, tmp_path / "w", CONFIG, backbone=lite0, keep_going=True)
    rows = result.manifest.set_index("series_uid")
    assert rows.loc[broken.series_uid, "status"] == "failed"
    assert "could not decode JPEG Baseline" in rows.loc[broken.series_uid, "reason"]
    assert rows.loc[rejected.series_uid, "status"] == "rejected"
    assert rows.loc[rejected.series_uid, "reason"] == rejected.rejected
    assert rows.loc[good[0], "status"] == "done"
    assert result.failed == [broken.series_uid]
    features, slices = load_features(tmp_path / "w", CONFIG.key)
    assert set(slices["series_uid"]) == set(good) and len(features) == len(slices)


def test_extract_series_is_a_self_contained_unit(
    tmp_path: Path, dataset: tuple[Path, list[str]], lite0: Backbone
) -> None:
    # What a cluster would map over series: no state besides the cache folder.
    root, _ = dataset
    job = next(j for j in find_series(root) if j.rejected is None)
    cache = FeatureCache(tmp_path, CONFIG.key)
    cache.prepare()
    runner = make_runner(CONFIG, lite0)
    row = extract_series(job, cache, runner, CONFIG)
    assert row["status"] == "done" and row["n_slices"] == 13 and row["model_s"] > 0
    assert cache.is_done(job.series_uid)
    stamp = cache.features_path(job.series_uid).stat().st_mtime_ns
    again = extract_series(job, cache, runner, CONFIG)
    assert again["n_slices"] == 13 and again["model_s"] is None  # found done, not recomputed
    assert cache.features_path(job.series_uid).stat().st_mtime_ns == stamp


def test_load_features_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(
        FeatureError, match=r"no feature manifest at .*; run `lungslice extract` first"
    ):
        load_features(tmp_path, "abc")
