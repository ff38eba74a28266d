"""The service's persistent state without Orthanc: cursor, queue, recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungslice.errors import ConfigError
from lungslice.serve.orthanc import OrthancClient, read_credentials
from lungslice.serve.state import ServeState

URL = "http://127.0.0.1:8042"


def test_cursor_and_studies_are_consumed_together_and_survive_a_reopen(tmp_path: Path) -> None:
    st = ServeState(tmp_path)
    assert st.cursor(URL) == 0
    assert st.consume(URL, 12, [("a", 5), ("b", 9)]) == ["a", "b"]
    assert st.consume(URL, 20, [("a", 15)]) == []  # already pending: not twice
    st.close()
    again = ServeState(tmp_path)
    assert again.cursor(URL) == 20
    assert again.cursor("http://other:8042") == 0
    assert [r.orthanc_id for r in again.studies("pending")] == ["a", "b"]


def test_processed_stays_done_failed_and_skipped_are_queued_again(tmp_path: Path) -> None:
    st = ServeState(tmp_path)
    st.consume(URL, 3, [("done", 1), ("bad", 2), ("cr", 3)])
    for orthanc_id, status in (("done", "processed"), ("bad", "failed"), ("cr", "skipped")):
        assert st.claim() == orthanc_id
        st.finish(orthanc_id, status, reason="why" if status != "processed" else None)
    # own results make 'done' stable again; new instances make the other two stable again
    assert st.consume(URL, 9, [("done", 7), ("bad", 8), ("cr", 9)]) == ["bad", "cr"]
    records = {r.orthanc_id: r for r in st.studies()}
    assert records["done"].status == "processed"
    assert records["bad"].status == "pending" and records["bad"].attempts == 0
    assert records["bad"].reason == "queued again: the study changed after failed (why)"


def test_a_study_that_keeps_killing_the_worker_is_failed(tmp_path: Path) -> None:
    st = ServeState(tmp_path)
    st.consume(URL, 1, [("x", 1)])
    for attempt in (1, 2):
        assert st.claim() == "x"  # the worker dies while processing
        assert st.recover(max_attempts=3) == ["x"]
        assert st.studies()[0].attempts == attempt
    assert st.claim() == "x"
    assert st.recover(max_attempts=3) == []
    (record,) = st.studies()
    assert record.status == "failed"
    assert record.reason == "the worker stopped 3 times while processing this study"
    assert st.claim() is None


def test_unreachable_orthanc_puts_the_study_back_without_counting(tmp_path: Path) -> None:
    st = ServeState(tmp_path)
    st.consume(URL, 1, [("x", 1)])
    st.claim()
    st.retry_later("x", "waiting for Orthanc")
    (record,) = st.studies()
    assert (record.status, record.attempts, record.reason) == ("pending", 0, "waiting for Orthanc")
    assert st.counts() == {"pending": 1, "running": 0, "processed": 0, "failed": 0, "skipped": 0}


def test_credentials_come_from_a_file_in_either_form(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("lungslice:pa:ss\n")
    assert read_credentials(plain).password == "pa:ss"
    js = tmp_path / "json"
    js.write_text('{"username": "u", "password": "p"}')
    creds = read_credentials(js)
    assert (creds.username, creds.password) == ("u", "p")
    assert "p'" not in repr(creds) and "***" in repr(creds)
    bad = tmp_path / "bad"
    bad.write_text("just-a-password\n")
    with pytest.raises(ConfigError, match="expected 'username:password' on one line"):
        read_credentials(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_credentials(tmp_path / "absent")
    with pytest.raises(ConfigError, match="credentials in the URL are refused"):
        OrthancClient("http://u:p@127.0.0.1:8042")
    with pytest.raises(ConfigError, match="expected http"):
        OrthancClient("127.0.0.1:8042")


def test_stage_timings_are_kept_and_an_older_state_file_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "serve.sqlite")
    db.executescript(  # the schema before stage timings
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE studies (orthanc_id TEXT PRIMARY KEY, study_uid TEXT, status TEXT NOT NULL,"
        " reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, model_id TEXT, outputs TEXT,"
        " seconds REAL, queued_at TEXT NOT NULL, updated_at TEXT NOT NULL, seq INTEGER);"
        "INSERT INTO studies VALUES ('a', '1.2', 'processed', NULL, 1, 'm', '[]', 3.5,"
        " '2026-01-01T00:00:00', '2026-01-01T00:00:04', 1);"
    )
    db.commit()
    db.close()
    st = ServeState(old)
    (before,) = st.studies()
    assert (before.status, before.seconds, before.timings) == ("processed", 3.5, {})
    st.consume(URL, 2, [("b", 2)])
    assert st.claim() == "b"
    st.finish("b", "processed", seconds=2.0, timings={"fetch": 0.5, "predict": 1.25})
    st.close()
    again = ServeState(old)
    assert {r.orthanc_id: r.timings for r in again.studies()} == {
        "a": {},
        "b": {"fetch": 0.5, "predict": 1.25},
    }
