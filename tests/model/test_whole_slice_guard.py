"""The out-of-domain guard of whole-slice bundles: stored at extraction, fitted in training,
checksummed in the bundle, applied by the Predictor as for candidate bundles."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lungslice.dicom.resample import ResampledVolume, resample
from lungslice.dicom.volume import CTVolume, load_series
from lungslice.errors import BundleMismatchError
from lungslice.features.cache import FeatureCache
from lungslice.features.extract import whole_slice_descriptor
from lungslice.lidc.labels import LabelRule
from lungslice.model.bundle import load_bundle
from lungslice.model.domain import DESCRIPTOR_NAMES, OUT_OF_DOMAIN_MESSAGE
from lungslice.model.evaluate import EvaluateConfig
from lungslice.model.train import train_bundle
from lungslice.prediction import PredictConfig, Predictor, _domain_verdict, predict
from lungslice.report import kos
from lungslice.report.html import figures, render_report
from lungslice.report.result_json import result_record
from tests.helpers import PIPELINE_PATIENTS, Pipeline, make_synthetic, synthetic_chest, training_set

#: What a bundle without a guard says where the verdict would be (the candidate path's words).
NO_GUARD = _domain_verdict(None, np.zeros(0)).message
#: Noise of the in-domain synthetic chests (HU), one study each.
TRAIN_NOISE = (12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0)


def _volume(seed: int, noise_hu: float, uid: str) -> ResampledVolume:
    hu = synthetic_chest(seed=seed, noise_hu=noise_hu).hu
    k = hu.shape[0]
    vol = CTVolume(
        hu=hu,
        spacing=(2.0, 2.0, 2.0),
        z_positions=np.arange(k, dtype=np.float64) * 2.0,
        sop_instance_uids=tuple(f"{uid}.{i}" for i in range(k)),
        instance_numbers=tuple(range(1, k + 1)),
        series_uid=uid,
        study_uid=f"{uid}.0",
        patient_id=f"P{seed}",
    )
    return resample(vol, 1.0)


@pytest.fixture(scope="module")
def guarded(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole-slice bundle with a guard, fitted on 9 synthetic chests of 12-20 HU noise.

    The head is trained on synthetic features of the pipeline backbone's width (its
    figures do not matter here); the descriptors come from the volumes as the
    volumes at full resolution, as extraction stores them.
    """
    record = FeatureCache.resolve(pipeline.root / "work").read_config() or {}
    width = int(record["backbone"]["feature_dim"])
    syn = make_synthetic(n_patients=len(TRAIN_NOISE), d=width, seed=0)
    ts = dataclasses.replace(training_set(syn, LabelRule()), feature_config=record)
    uids = ts.slices["series_uid"].drop_duplicates().tolist()
    descriptors = {
        u: whole_slice_descriptor(_volume(i, noise, u))
        for i, (u, noise) in enumerate(zip(uids, TRAIN_NOISE, strict=True))
    }
    out = tmp_path_factory.mktemp("guarded") / "model"
    train_bundle(
        ts, out, aggregator="noisy_or", config=EvaluateConfig(n_splits=0), descriptors=descriptors
    )
    return out


def test_extraction_stores_the_descriptor_predict_measures(pipeline: Pipeline) -> None:
    cache = FeatureCache.resolve(pipeline.root / "work")
    manifest = cache.read_manifest()
    uids = manifest.loc[manifest["status"] == "done", "series_uid"].tolist()
    stored = cache.read_descriptors(uids)
    assert sorted(stored) == sorted(uids) and len(uids) == len(PIPELINE_PATIENTS)
    record = json.loads(cache.descriptor_path(uids[0]).read_text())
    assert record["names"] == list(DESCRIPTOR_NAMES)
    # measured at full resolution before the shrink to 96 px, as predict measures a study
    rs = resample(load_series(pipeline.study(PIPELINE_PATIENTS[0])), 1.0)
    assert rs.hu.shape[1] == 256 > pipeline.config.inputs.size  # type: ignore[operator]
    again = whole_slice_descriptor(rs)
    want = stored[rs.source.series_uid]
    assert want.shape == (len(DESCRIPTOR_NAMES),)
    np.testing.assert_allclose(again, want, rtol=1e-6, atol=1e-9)


def test_a_bundle_without_a_guard_says_so_where_the_verdict_would_be(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    manifest = json.loads((pipeline.model / "model.json").read_text())
    assert manifest["domain"] is None  # 3 training studies: fewer than MIN_DOMAIN_STUDIES
    assert manifest["training"]["domain"].startswith("no domain guard: 3 training studies")
    # a bundle written before the guard existed: no "domain" key at all
    old = tmp_path / "old"
    shutil.copytree(pipeline.model, old)
    del manifest["domain"]
    del manifest["training"]["domain"]
    (old / "model.json").write_text(json.dumps(manifest))
    assert load_bundle(old).domain is None
    (result,) = predict(
        pipeline.study(PIPELINE_PATIENTS[0]), old, config=PredictConfig(heatmaps=False)
    )
    assert result["domain"]["in_domain"] is None
    assert result["domain"]["message"] == NO_GUARD
    assert "no domain guard" in NO_GUARD
    assert "calibrated_for_input" not in result["scores"]  # whole-slice scores: unchanged keys


def test_the_guard_is_stored_checksummed_and_read_back(guarded: Path, tmp_path: Path) -> None:
    manifest = json.loads((guarded / "model.json").read_text())
    assert "domain.npz" in manifest["files"]
    summary = manifest["domain"]["summary"]
    assert summary["method"] == "knn" and summary["n_train"] == len(TRAIN_NOISE)
    assert summary["cv_pass_rate"] >= 0.95
    assert manifest["training"]["domain"].startswith("knn on 12 acquisition statistics of 9")
    bundle = load_bundle(guarded)
    assert bundle.domain is not None
    assert bundle.domain.threshold_ == pytest.approx(manifest["domain"]["params"]["threshold"])
    broken = tmp_path / "broken"
    shutil.copytree(guarded, broken)
    with np.load(broken / "domain.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["mean"] = arrays["mean"] + 1.0
    np.savez(broken / "domain.npz", **arrays)
    with pytest.raises(BundleMismatchError, match=r"domain\.npz: SHA-256"):
        load_bundle(broken)


def test_whole_slice_guard_passes_held_out_and_flags_foreign(
    guarded: Path, pipeline: Pipeline, tmp_path: Path
) -> None:
    predictor = Predictor(guarded)
    config = PredictConfig(heatmaps=False)
    held_out = predictor.predict(_volume(100, 15.5, "9.9.1"), config)
    assert held_out.domain is not None and held_out.domain.in_domain is True
    assert held_out.domain.message is None and not held_out.out_of_domain
    assert "descriptor" in held_out.timings
    assert result_record(held_out)["domain"]["in_domain"] is True

    foreign = predictor.predict(_volume(101, 15.5 * 5, "9.9.2"), config)  # noise x5
    assert foreign.out_of_domain and foreign.scores.calibrated_for_input is False
    record = result_record(foreign)["domain"]
    assert record["in_domain"] is False and record["message"] == OUT_OF_DOMAIN_MESSAGE
    assert record["score"] > record["threshold"]
    assert any(f["feature"].startswith("noise_") for f in record["furthest"])
    # the same report paths as candidate bundles: HTML banner, KOS title
    thumbs, z_plot = figures(foreign)
    page = render_report(foreign, z_plot, thumbs, tmp_path / "report.html").read_text()
    assert "<div class='ood'><b>Outside the training domain</b>" in page
    assert OUT_OF_DOMAIN_MESSAGE in kos.title(foreign)
    assert OUT_OF_DOMAIN_MESSAGE not in kos.title(held_out)
