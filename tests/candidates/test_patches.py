"""Candidate patches: trilinear sampling in mm, view orientation, padding, windows, features."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungslice.candidates.patches import (
    PLANES,
    PatchConfig,
    candidate_features,
    extract_patches,
    parse_view,
)
from lungslice.errors import ConfigError

SPACING = (1.0, 0.7, 0.8)


def _linear_volume(shape: tuple[int, int, int] = (30, 60, 50)) -> np.ndarray:
    z, r, c = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return (3.0 * z - 2.0 * r + 1.5 * c - 500.0).astype(np.float32)


def _expected_linear(centre: np.ndarray, view: str, field: float, size: int) -> np.ndarray:
    plane, offset = parse_view(view)
    normal, (au, su), (av, sv) = PLANES[plane]
    steps = ((np.arange(size) + 0.5) / size - 0.5) * field
    p = np.zeros((size, size, 3))
    p[..., normal] = centre[normal] + offset / SPACING[normal]
    p[..., au] = centre[au] + su * steps[:, None] / SPACING[au]
    p[..., av] = centre[av] + sv * steps[None, :] / SPACING[av]
    return 3.0 * p[..., 0] - 2.0 * p[..., 1] + 1.5 * p[..., 2] - 500.0


def test_trilinear_is_exact_on_a_linear_volume() -> None:
    hu = _linear_volume()
    config = PatchConfig(
        views=("axial", "coronal", "sagittal", "axial+2", "axial-1.5"),
        fields_mm=(8.0, 12.0),
        size=16,
    )
    centres = np.array([[15.3, 30.2, 25.7], [12.0, 28.0, 20.0]])
    out = extract_patches(hu, SPACING, centres, config, windowed=False)
    assert out.shape == (2, 10, 1, 16, 16)
    names = config.image_names
    assert names[:2] == ("axial@8mm", "axial@12mm")
    for i, c in enumerate(centres):
        for j, name in enumerate(names):
            view, field = name.split("@")
            want = _expected_linear(c, view, float(field[:-2]), 16)
            np.testing.assert_allclose(out[i, j, 0], want, atol=2e-3, err_msg=name)


def test_coronal_rows_run_head_up() -> None:
    # z increases toward the head: the top row of a coronal patch is the highest z
    hu = _linear_volume()
    out = extract_patches(
        hu,
        SPACING,
        np.array([[15.0, 30.0, 25.0]]),
        PatchConfig(fields_mm=(16.0,), size=16),
        windowed=False,
    )
    coronal = out[0, 1, 0]
    assert (np.diff(coronal[:, 0]) < 0).all()  # value = 3 z + ...: falls down the rows


def test_matches_grid_sample_with_padding() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-400, 300, size=(12, 20, 24)).astype(np.int16)
    config = PatchConfig(fields_mm=(10.0, 30.0), size=16)
    centres = np.array([[5.5, 10.2, 12.7], [0.2, 1.0, 23.5], [11.9, 19.6, 0.1], [-3, 5, 5]])
    out = extract_patches(hu, SPACING, centres, config, windowed=False)
    vol = torch.from_numpy(hu.astype(np.float32) + 1000.0)[None, None]
    n = np.array(hu.shape, dtype=np.float64)
    for j, name in enumerate(config.image_names):
        view, field = name.split("@")
        plane, _ = parse_view(view)
        normal, (au, su), (av, sv) = PLANES[plane]
        steps = ((np.arange(16) + 0.5) / 16 - 0.5) * float(field[:-2])
        p = np.zeros((len(centres), 16, 16, 3))
        p[..., normal] = centres[:, None, None, normal]
        p[..., au] = centres[:, None, None, au] + su * steps[None, :, None] / SPACING[au]
        p[..., av] = centres[:, None, None, av] + sv * steps[None, None, :] / SPACING[av]
        grid = torch.from_numpy((2 * p / (n - 1) - 1)[..., ::-1].copy()).float()[None]
        ref = F.grid_sample(vol, grid, align_corners=True)[0, 0].numpy() - 1000.0
        np.testing.assert_allclose(out[:, j, 0], ref, atol=0.05, err_msg=name)
    # a centre far outside the volume sees air only
    far = extract_patches(hu, SPACING, np.array([[100.0, 100, 100]]), config, windowed=False)
    np.testing.assert_array_equal(far, -1000.0)


def test_windows_and_dtype() -> None:
    hu = _linear_volume()
    config = PatchConfig(size=16)
    raw = extract_patches(hu, SPACING, np.array([[15.0, 30, 25]]), config, windowed=False)
    win = extract_patches(hu, SPACING, np.array([[15.0, 30, 25]]), config)
    assert win.dtype == np.float32 and win.shape == (1, 3, 3, 16, 16)
    for k, (lo, hi) in enumerate(config.windows):
        np.testing.assert_allclose(
            win[:, :, k], np.clip((raw[:, :, 0] - lo) / (hi - lo), 0, 1), atol=1e-6
        )
    assert extract_patches(hu, SPACING, np.zeros((0, 3)), config).shape == (0, 3, 3, 16, 16)


def test_config_round_trip_and_errors() -> None:
    config = PatchConfig(views=("axial-2", "axial", "axial+2"), fields_mm=(16, 32), size=48)
    back = PatchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert config.n_images == 6
    with pytest.raises(ConfigError, match="unknown view 'oblique'"):
        PatchConfig(views=("oblique",))
    with pytest.raises(ConfigError, match="repeats a view"):
        PatchConfig(views=("axial", "axial"))
    with pytest.raises(ConfigError, match="3 windows"):
        PatchConfig(windows=((-1000.0, 400.0),))
    with pytest.raises(ConfigError, match="unknown key"):
        PatchConfig.from_dict({"view": ["axial"]})
    hu = _linear_volume()
    with pytest.raises(ConfigError, match=r"centres of shape \(n, 3\)"):
        extract_patches(hu, SPACING, np.zeros((2, 2)), config)
    with pytest.raises(ConfigError, match="HU volume"):
        extract_patches(hu[0], SPACING, np.zeros((1, 3)), config)
    with pytest.raises(ConfigError, match="not finite"):
        extract_patches(hu, SPACING, np.array([[np.nan, 1, 1]]), config)


class _MeanRunner:
    """Stands in for FeatureRunner: per-image channel means (and counts the batches)."""

    def __init__(self) -> None:
        self.backbone = SimpleNamespace(
            feature_dim=3, data_config={"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
        )
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        self.batches.append(int(x.shape[0]))
        return x.mean(dim=(2, 3)).numpy()


def test_candidate_features_layout_and_normalisation() -> None:
    hu = _linear_volume()
    config = PatchConfig(fields_mm=(8.0, 16.0), size=16)
    centres = np.array([[15.0, 30, 25], [10.0, 20, 20], [20.0, 40, 30]])
    runner: Any = _MeanRunner()
    feats = candidate_features(hu, SPACING, centres, runner, config, batch_size=4)
    assert feats.shape == (3, config.n_images * 3) and feats.dtype == np.float32
    assert max(runner.batches) <= 4 and sum(runner.batches) == 3 * config.n_images
    patches = extract_patches(hu, SPACING, centres, config)
    mean = np.array(runner.backbone.data_config["mean"])[:, None, None]
    std = np.array(runner.backbone.data_config["std"])[:, None, None]
    want = ((patches - mean) / std).mean(axis=(3, 4)).reshape(3, -1)
    np.testing.assert_allclose(feats, want, atol=1e-5)
    empty = candidate_features(hu, SPACING, np.zeros((0, 3)), runner, config)
    assert empty.shape == (0, config.n_images * 3)


@pytest.mark.slow
def test_candidate_features_with_efficientnet() -> None:
    from lungslice.features.config import FeatureConfig
    from lungslice.features.extract import make_runner

    runner = make_runner(FeatureConfig(weights="random", layers=("blocks.4",), device="cpu"))
    hu = _linear_volume()
    feats = candidate_features(
        hu, SPACING, np.array([[15.0, 30, 25], [5.0, 5, 5]]), runner, PatchConfig()
    )
    assert feats.shape == (2, 3 * runner.backbone.feature_dim)
    assert np.isfinite(feats).all()
