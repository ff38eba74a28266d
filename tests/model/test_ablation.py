"""Ablation over feature caches x layer subsets on synthetic caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lungslice.cli.model  # noqa: F401  (registers the commands)
from lungslice.cli import app
from lungslice.errors import FeatureError
from lungslice.model.ablation import ablation, layer_columns
from lungslice.model.evaluate import EvaluateConfig
from lungslice.model.heads import HeadConfig
from tests.helpers import make_synthetic, write_cache, write_labels_dir


def _record(weights: str) -> dict:
    return {
        "config": {
            "backbone": "efficientnet_lite0",
            "weights": weights,
            "inputs": {"mode": "windows"},
        },
        "backbone": {"name": "efficientnet_lite0", "layers": ["a", "b"], "layer_widths": [8, 8]},
    }


def test_layer_columns() -> None:
    rec = {"key": "k", "backbone": {"layers": ["x", "y", "z"], "layer_widths": [2, 3, 1]}}
    assert layer_columns(rec, ["y"]).tolist() == [2, 3, 4]
    assert layer_columns(rec, ["x", "z"]).tolist() == [0, 1, 5]
    with pytest.raises(
        FeatureError,
        match=r"holds layers \['x', 'y', 'z'\], not \['w'\]. Fix: extract with --layers x,y,z,w",
    ):
        layer_columns(rec, ["w"])


@pytest.fixture(scope="module")
def ablation_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    syn = make_synthetic(n_patients=12, n_slices=30, d=16, seed=4)
    rng = np.random.default_rng(0)
    # "pretrained": layer a informative, b noise; "random": both noise
    informative = np.concatenate([syn.X[:, :8], rng.normal(size=(syn.y.size, 8))], axis=1)
    noise = rng.normal(size=(syn.y.size, 16))
    write_cache(root / "work", syn, "kimagenet", informative, _record("imagenet"))
    write_cache(root / "work", syn, "krandom", noise, _record("random"))
    write_labels_dir(root / "labels", syn)
    return root


@pytest.mark.slow
def test_ablation_compares_transfer_and_layers(ablation_ws, tmp_path) -> None:
    work, labels = ablation_ws / "work", ablation_ws / "labels"
    table = ablation(
        work,
        ["kimagenet", "krandom"],
        labels,
        tmp_path / "out",
        layer_choices=[("a",), ("b",)],
        head_config=HeadConfig(C_grid=(0.1,)),
        config=EvaluateConfig(n_splits=3, n_boot=10),
    )
    assert len(table) == 2 * 2 * 3  # caches x layer choices x aggregators
    stored = json.loads((tmp_path / "out" / "ablation.json").read_text())
    auc = {
        (v["weights"], tuple(v["layers"])): v["figures"]["slice.roc_auc.macro"]["value"]
        for v in stored["variants"]
    }
    assert auc[("imagenet", ("a",))] > 0.9
    assert auc[("imagenet", ("a",))] > auc[("imagenet", ("b",))] + 0.2
    assert auc[("imagenet", ("a",))] > auc[("random", ("a",))] + 0.2
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| imagenet | windows | a | noisy_or |" in md


def test_ablate_command(ablation_ws, tmp_path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "ablate",
            str(ablation_ws / "work"),
            str(ablation_ws / "labels"),
            "--keys",
            "kimagenet",
            "--layers",
            "a;a,b",
            "--folds",
            "3",
            "--bootstrap",
            "5",
            "--grid",
            "0.1",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| imagenet | windows | a | max |" in md
    assert "| imagenet | windows | a+b | learned |" in md
    res = CliRunner().invoke(
        app,
        [
            "ablate",
            str(ablation_ws / "work"),
            str(ablation_ws / "labels"),
            "--keys",
            "kimagenet",
            "--layers",
            "head",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code == 2
    assert "holds layers ['a', 'b'], not ['head']" in " ".join(res.output.split())
