"""`lungslice train` / `evaluate` on an on-disk feature cache and labels folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lungslice.cli.model  # noqa: F401  (registers train/evaluate on the app)
from lungslice.cli import app
from lungslice.model.bundle import load_bundle
from lungslice.model.dataset import build_training_set
from tests.helpers import make_synthetic, write_cache, write_labels_dir

KEY = "synthkey0123"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """WORK/features/<key> with 12 series and a labels folder."""
    root = tmp_path_factory.mktemp("ws")
    syn = make_synthetic(n_patients=12, n_slices=30, seed=2)
    record = {
        "key_payload": {"backbone": "efficientnet_lite0", "weights": "abc", "layers": ["b6"]},
        "created": "2026-11-25T00:00:00+00:00",
    }
    write_cache(root / "work", syn, KEY, syn.X, record)
    write_labels_dir(root / "labels", syn)
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
