"""The Orthanc client without Orthanc: multipart answers, and waiting for a server to answer.

A stdlib HTTP server on 127.0.0.1 plays an Orthanc that starts late; a free
port with nothing behind it plays one that never comes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lungslice.errors import ConfigError
from lungslice.serve.local import free_port
from lungslice.serve.orthanc import (
    OrthancClient,
    OrthancDownError,
    OrthancError,
    Patience,
    RetryPolicy,
    split_multipart,
)

QUICK = Patience(max_wait_s=30.0, max_tries=20, initial_delay_s=0.05, max_delay_s=0.2)


def test_split_multipart_returns_each_part_and_refuses_a_cut_answer() -> None:
    ctype = 'multipart/related; type="application/dicom"; boundary=b0undary'
    body = (
        b"--b0undary\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n\r\n"
        b"--b0undary\r\nContent-Type: application/dicom\r\nContent-Length: 6\r\n\r\nsecond\r\n"
        b"--b0undary--\r\n"
    )
    assert [bytes(p) for p in split_multipart(body, ctype)] == [b"first\r\n", b"second"]
    assert split_multipart(b"--b0undary--\r\n", ctype) == []
    with pytest.raises(ValueError, match="no closing delimiter after 1 part"):
        split_multipart(body[:-30], ctype)
    with pytest.raises(ValueError, match="is not multipart with a boundary"):
        split_multipart(body, "application/dicom")


def test_patience_refuses_unbounded_or_empty_settings() -> None:
    with pytest.raises(ConfigError, match="--orthanc-tries: expected >= 1, got 0"):
        Patience(max_tries=0)
    with pytest.raises(ConfigError, match="--orthanc-wait: expected seconds >= 0, got -1"):
        Patience(max_wait_s=-1)
    with pytest.raises(ConfigError, match="expected 0 < initial_delay_s <= max_delay_s"):
        Patience(initial_delay_s=0.0)
    delays = Patience(initial_delay_s=1.0, max_delay_s=5.0).delays()
    assert [next(delays) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_an_orthanc_that_never_answers_is_given_up_within_the_tries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = OrthancClient(url, retry=RetryPolicy(attempts=1))
    patience = Patience(max_wait_s=30.0, max_tries=4, initial_delay_s=0.05, max_delay_s=0.1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lungslice"):
        with pytest.raises(OrthancDownError) as info:
            client.wait_until_up(patience)
    assert time.monotonic() - t0 < 10
    err = info.value
    assert (err.tries, err.phase, err.url) == (4, "start-up", url)
    text = str(err)
    assert text.startswith(f"Orthanc at {url} did not answer (start-up: 4 tries in ")
    assert "ConnectionRefusedError" in text
    assert "Check that Orthanc runs" in text and '"HttpPort"' in text
    assert "--orthanc-wait and --orthanc-tries" in text
    tries = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(tries) == 3  # each failed try before the last is logged with the next wait
    assert f"Orthanc at {url} does not answer (start-up, try 1 of at most 4" in tries[0]
    assert "next try in 0.1 s" in tries[1]


def test_the_wait_is_bounded_in_time_as_well(caplog: pytest.LogCaptureFixture) -> None:
    client = OrthancClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1))
    patience = Patience(max_wait_s=0.5, max_tries=1000, initial_delay_s=0.1, max_delay_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(OrthancDownError) as info:
        client.wait_until_up(patience, phase="mid-run", first_failure="HTTP 503")
    assert time.monotonic() - t0 < 5
    assert 2 <= info.value.tries < 10
    assert info.value.waited_s <= 0.5
    assert "(mid-run: " in str(info.value)


class _LateServer(BaseHTTPRequestHandler):
    """Answers 503 to the first ``fail`` requests, then ``/system``; 401 without the password."""

    fail = 0
    seen = 0

    def do_GET(self) -> None:
        cls = type(self)
        cls.seen += 1
        if self.headers.get("Authorization") != "Basic dTpw":  # u:p
            self.send_response(401)
        elif cls.seen <= cls.fail:
            self.send_response(503)
        else:
            body = json.dumps({"Name": "late", "Version": "0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def late_server() -> Iterator[tuple[str, type[_LateServer]]]:
    handler = type("Handler", (_LateServer,), {"fail": 3, "seen": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_server_that_answers_late_is_waited_for_and_a_wrong_password_is_not(
    late_server: tuple[str, type[_LateServer]], caplog: pytest.LogCaptureFixture
) -> None:
    from lungslice.serve.orthanc import Credentials

    url, handler = late_server
    client = OrthancClient(url, Credentials("u", "p"), retry=RetryPolicy(attempts=1))
    with caplog.at_level(logging.WARNING, logger="lungslice"):
        answer = client.wait_until_up(QUICK)
    assert answer == {"Name": "late", "Version": "0"}
    assert handler.seen == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("does not answer (start-up, try" in m and "HTTP 503" in m for m in messages) == 3
    assert any("answers again (start-up, try 4" in m for m in messages)
    wrong = OrthancClient(url, Credentials("u", "wrong"), retry=RetryPolicy(attempts=1))
    with pytest.raises(OrthancError, match="answered HTTP 401") as info:
        wrong.wait_until_up(QUICK)
    assert not isinstance(info.value, OrthancDownError)
    assert handler.seen == 5  # one try: waiting does not fix credentials


def test_a_stopping_service_interrupts_the_wait() -> None:
    client = OrthancClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1))
    stop = threading.Event()
    stop.set()
    assert client.wait_until_up(QUICK, sleep=stop.wait) is None
