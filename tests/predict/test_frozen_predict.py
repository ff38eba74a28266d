"""Predict with a bundle's frozen feature extractor: same results as timm's, without timm."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lungslice.features.frozen import FILE, FrozenBackbone
from lungslice.model.bundle import freeze_bundle, load_bundle
from lungslice.prediction import Predictor, predict
from tests.helpers import Pipeline

#: Result keys that name the run, not what was found.
RUN_KEYS = {"model", "timings_s", "provenance", "run", "created", "output"}


def _without_frozen(bundle: Path, to: Path) -> Path:
    """A copy of ``bundle`` as saved before frozen extractors existed."""
    shutil.copytree(bundle, to)
    manifest = json.loads((to / "model.json").read_text())
    record = manifest.pop("frozen_backbone")
    del manifest["files"][record["file"]]
    (to / record["file"]).unlink()
    (to / "model.json").write_text(json.dumps(manifest))
    return to


def _findings(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in RUN_KEYS}


def _assert_close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7), path
    else:
        assert a == b, path


def test_saved_bundle_holds_a_verified_frozen_extractor(pipeline: Pipeline) -> None:
    bundle = load_bundle(pipeline.model)  # verifies every file's SHA-256, the extractor's too
    record = bundle.manifest["frozen_backbone"]
    assert record["file"] == FILE and bundle.manifest["files"][FILE] == record["sha256"]
    assert record["feature_dim"] == bundle.head.n_features
    predictor = Predictor(bundle)
    assert isinstance(predictor.runner.backbone, FrozenBackbone)
    assert predictor.model_info().weights_id == bundle.feature_record["weights_id"]


def test_frozen_and_timm_predictions_agree(pipeline: Pipeline, tmp_path: Path) -> None:
    old = _without_frozen(pipeline.model, tmp_path / "old")
    assert not isinstance(Predictor(old).runner.backbone, FrozenBackbone)
    study = pipeline.study("LIDC-IDRI-0001")
    (frozen,) = predict(study, pipeline.model, out_dir=tmp_path / "frozen")
    (timm,) = predict(study, old, out_dir=tmp_path / "timm")
    assert frozen["recommendations"], "the study should have recommendations"
    _assert_close(_findings(timm), _findings(frozen))
    # an old bundle gains the extractor, and predicts the same with it
    record = freeze_bundle(old, Predictor(old).feature_config)
    assert record is not None and (old / FILE).is_file()
    assert isinstance(Predictor(old).runner.backbone, FrozenBackbone)
    (upgraded,) = predict(study, old, out_dir=tmp_path / "upgraded")
    _assert_close(_findings(timm), _findings(upgraded))


def test_whole_slice_predictor_loads_without_timm_or_sklearn(pipeline: Pipeline) -> None:
    code = (
        "import sys\n"
        "from lungslice.prediction import Predictor\n"
        f"p = Predictor({str(pipeline.model)!r})\n"
        "print(type(p.runner.backbone).__name__)\n"
        "heavy = ('timm', 'torchvision', 'torch._dynamo', 'sklearn')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2:] == ["FrozenBackbone", "[]"], done.stdout
    assert "deprecated" not in done.stderr  # TorchScript's notices stay off the console
