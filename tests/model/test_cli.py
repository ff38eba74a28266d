"""`lungslice train` / `evaluate` on an on-disk feature cache and labels folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lungslice.cli.model  # noqa: F401  (registers train/evaluate on the app)
from lungslice.cli import app
from lungslice.features.cache import FeatureCache
from lungslice.lidc.labels import LabelRule, write_labels
from lungslice.model.bundle import load_bundle
from lungslice.model.dataset import build_training_set

from .conftest import make_synthetic

KEY = "synthkey0123"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """WORK/features/<key> with 12 series (1 mm source = resampled) and a labels folder."""
    root = tmp_path_factory.mktemp("ws")
    syn = make_synthetic(n_patients=12, n_slices=30, seed=2)
    cache = FeatureCache(root / "work", KEY)
    cache.prepare()
    manifest = []
    for uid, rows in syn.slices.groupby("series_uid", sort=False).indices.items():
        part = syn.slices.iloc[rows].reset_index(drop=True)
        n = len(part)
        i = np.arange(n)
        part = part.assign(
            source_lower=i,
            source_upper=np.minimum(i + 1, n - 1),
            weight_lower=1.0,
            weight_upper=0.0,
            source_z_lower=part["z_mm"].to_numpy(),
            source_z_upper=part["z_mm"].to_numpy()[np.minimum(i + 1, n - 1)],
            nearest_source=i,
        )
        cache.write_series(uid, syn.X[rows].astype(np.float16), part)
        manifest.append({"series_uid": uid, "patient_id": part["patient_id"][0], "status": "done"})
    cache.write_manifest(manifest)
    cache.write_config(
        {
            "key": KEY,
            "key_payload": {"backbone": "efficientnet_lite0", "weights": "abc", "layers": ["b6"]},
            "created": "2026-11-25T00:00:00+00:00",
        }
    )
    label_slices = syn.slices[["patient_id", "study_uid", "series_uid", "slice_index", "z_mm"]]
    nodules = syn.nodules.assign(
        study_uid="x",
        n_readers=np.where(np.arange(len(syn.nodules)) % 2 == 0, 4, 2),
        mean_malignancy=np.where(syn.nodules["label"] == 2, 4.0, 2.0),
        median_malignancy=np.where(syn.nodules["label"] == 2, 4.0, 2.0),
        slice_indices=[
            list(range(int(a), int(b) + 1))
            for a, b in zip(syn.nodules["z_min"], syn.nodules["z_max"], strict=True)
        ],
    ).drop(columns=["label"])
    write_labels(root / "labels", label_slices.assign(scan_id=1), nodules, rule=LabelRule())
    return root, syn


def test_build_training_set_from_disk(workspace) -> None:
    root, syn = workspace
    ts = build_training_set(root / "work", root / "labels")
    np.testing.assert_array_equal(ts.y, syn.y)
    assert ts.feature_config["key"] == KEY
    same = build_training_set(root / "work" / "features" / KEY, root / "labels")
    assert same.y.size == ts.y.size


@pytest.mark.slow
def test_train_and_evaluate_commands(workspace) -> None:
    root, syn = workspace
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            str(root / "work"),
            str(root / "labels"),
            "--out",
            str(root / "model"),
            "--folds",
            "3",
            "--bootstrap",
            "10",
            "--grid",
            "0.1",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((root / "model" / "model.json").read_text())
    assert manifest["features"]["key"] == KEY
    assert manifest["training"]["patients"] == 12
    assert manifest["label_rule"]["rule"] == "mean"
    assert manifest["cv_metrics"]["aggregator"] == manifest["aggregate"]["method"]
    assert len(manifest["cv_metrics"]["folds"]) == 3
    bundle = load_bundle(root / "model")
    assert bundle.head.predict_proba(syn.X).shape == (syn.y.size, 3)

    res = runner.invoke(
        app,
        [
            "evaluate",
            str(root / "work"),
            str(root / "labels"),
            "--out",
            str(root / "eval"),
            "--folds",
            "3",
            "--bootstrap",
            "10",
            "--grid",
            "0.1",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert list(metrics["rules"]) == ["mean>=3", "mean>=3 excl-3", "mean>=3 readers>=3"]
    # >= 3 readers drops the 2-reader nodules: fewer nodules than the default rule
    counts = {k: v["summary"]["nodules_per_class"] for k, v in metrics["rules"].items()}
    assert sum(counts["mean>=3 readers>=3"].values()) < sum(counts["mean>=3"].values())
    assert (root / "eval" / "report.md").is_file()


def test_cli_errors_are_clean(workspace, tmp_path) -> None:
    root, _ = workspace
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", str(tmp_path), str(root / "labels"), "--out", str(tmp_path / "m")]
    )
    assert res.exit_code == 2
    flat = " ".join(res.output.split())  # rich wraps long lines
    assert "expected a work folder with exactly one feature cache under features/, found 0" in flat
    res = runner.invoke(
        app,
        [
            "train",
            str(root / "work"),
            str(root / "labels"),
            "--out",
            str(tmp_path / "m"),
            "--head",
            "svm",
        ],
    )
    assert res.exit_code == 2
    assert "expected 'logistic' or 'mlp', got 'svm'" in " ".join(res.output.split())
