"""HU slices -> normalised 3-channel network inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungslice.dicom.resample import ResampledVolume
from lungslice.dicom.volume import CTVolume
from lungslice.errors import ConfigError
from lungslice.features.inputs import InputConfig, make_inputs

DATA = {"input_size": (3, 32, 32), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.5)}


def test_windows_map_hu_to_normalised_channels() -> None:
    hu = np.full((2, 32, 32), -300.0, dtype=np.float32)
    x = make_inputs(hu, InputConfig(), DATA)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    lung = (-300 + 1000) / 1400  # 0.5
    mediastinal = 0.0  # below -160: clipped
    wide = (-300 + 1400) / 2400
    expected = [(lung - 0.5) / 0.2, (mediastinal - 0.4) / 0.25, (wide - 0.3) / 0.5]
    for c in range(3):
        assert torch.allclose(x[:, c], torch.full((2, 32, 32), expected[c]), atol=1e-6)


def test_resize_to_backbone_size_or_config_size() -> None:
    hu = np.zeros((3, 64, 48), dtype=np.float32)
    assert make_inputs(hu, InputConfig(), DATA).shape == (3, 3, 32, 32)
    assert make_inputs(hu, InputConfig(size=40), DATA).shape == (3, 3, 40, 40)


def test_25d_uses_neighbours_and_repeats_edges() -> None:
    hu = np.stack([np.full((32, 32), v, np.float32) for v in (-1000.0, -650.0, -300.0)])
    x = make_inputs(hu, InputConfig(mode="2.5d"), DATA)
    # Undo the normalisation: channel c of slice i holds window(slice i + c - 1).
    w = x * torch.tensor(DATA["std"]).view(1, 3, 1, 1) + torch.tensor(DATA["mean"]).view(1, 3, 1, 1)
    got = w[:, :, 0, 0].numpy()
    np.testing.assert_allclose(got, [[0, 0, 0.25], [0, 0.25, 0.5], [0.25, 0.5, 0.5]], atol=1e-6)


def test_accepts_resampled_volume() -> None:
    hu = np.random.default_rng(0).normal(-500, 300, (4, 32, 32)).astype(np.float32)
    vol = CTVolume(
        hu, (1.0, 1.0, 1.0), np.arange(4.0), ("1", "2", "3", "4"), (1, 2, 3, 4), "s", "t", "p"
    )
    rv = ResampledVolume(
        hu,
        (1.0, 1.0, 1.0),
        np.arange(4.0),
        np.stack([np.arange(4)] * 2, 1),
        np.full((4, 2), 0.5),
        np.arange(4),
        vol,
    )
    assert torch.equal(make_inputs(rv, InputConfig(), DATA), make_inputs(hu, InputConfig(), DATA))


def test_bad_configs() -> None:
    with pytest.raises(
        ConfigError, match=r"InputConfig.mode: expected 'windows' or '2.5d', got '3d'"
    ):
        InputConfig(mode="3d")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"'windows' mode needs 3 windows \(one per channel\), got 2"
    ):
        InputConfig(windows=((-1000, 400), (-160, 240)))
    with pytest.raises(ConfigError, match=r"window \(400, -1000\) needs hi > lo"):
        InputConfig(window_25d=(400, -1000))
    with pytest.raises(
        ConfigError, match=r"expected HU slices \(n, rows, columns\), got shape \(32, 32\)"
    ):
        make_inputs(np.zeros((32, 32)), InputConfig(), DATA)
