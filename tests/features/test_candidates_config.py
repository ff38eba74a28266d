"""CandidateConfig: the measurements setting, its cache key and old records."""

from __future__ import annotations

from lungslice.candidates.measures import MEASUREMENT_FEATURES
from lungslice.features.candidates import CANDIDATE_COLUMNS, CandidateConfig


def test_measurements_change_the_key_and_the_width() -> None:
    on, off = CandidateConfig(), CandidateConfig(measurements=False)
    assert on.measurements and on.n_measurements == len(MEASUREMENT_FEATURES) == 13
    assert off.n_measurements == 0
    assert on.key != off.key
    assert "measurements" not in off.key_payload()  # caches made before the setting keep their key
    assert on.key_payload()["measurements"] == list(MEASUREMENT_FEATURES)


def test_round_trip_and_records_from_before_the_setting() -> None:
    on = CandidateConfig()
    back = CandidateConfig.from_dict(on.to_dict())
    assert back.measurements and back.key == on.key
    old = on.to_dict()
    old.pop("measurements")
    legacy = CandidateConfig.from_dict(old)
    assert not legacy.measurements
    assert legacy.key == CandidateConfig(measurements=False).key


def test_candidate_table_keeps_the_detector_measurements() -> None:
    for col in ("score", "radius_mm", "log_response", "hu_mean", "eig1", "eig2", "eig3"):
        assert col in CANDIDATE_COLUMNS
