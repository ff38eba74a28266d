from __future__ import annotations

import pytest

from lungslice.errors import ConfigError
from lungslice.phantom import PhantomConfig


def test_defaults_are_valid() -> None:
    c = PhantomConfig()
    assert (c.matrix, c.z_margin_mm, c.mask_mode) == (512, None, "consensus")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matrix": 128}, r"PhantomConfig.matrix must be 512 or 256, got 128\. Fix: --matrix"),
        ({"z_margin_mm": -1.0}, r"z_margin_mm must be >= 0 mm or None, got -1.0"),
        (
            {"kernel": "sharp"},
            r"kernel must be 'auto' or one of \['bone', 'lung', 'soft', 'standard'\]",
        ),
        ({"noise_hu": -5.0}, r"noise_hu must be >= 0 HU, got -5.0"),
        ({"mask_mode": "union"}, r"mask_mode must be 'consensus' or 'reader', got 'union'"),
        ({"reader": -1}, r"PhantomConfig.reader must be >= 0, got -1"),
    ],
)
def test_invalid_config_says_what_and_how(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PhantomConfig(**kwargs)
