"""A small HTTP client for Orthanc's REST API and its DICOMweb plugin (stdlib only).

Every request carries HTTP basic credentials read from a file
(:func:`read_credentials`). Connection errors, timeouts and 5xx answers are
retried with exponential backoff, a bounded number of times; what is still
failing after that raises :class:`OrthancUnavailableError`, which callers
treat as "try again later", not as a property of the study. Any other HTTP
error (401, 404, 400) raises :class:`OrthancError` at once.

Logs name URLs by Orthanc identifiers only; no response body (which may hold
patient names) is ever logged.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungslice.errors import ConfigError, LungsliceError

__all__ = [
    "Credentials",
    "OrthancClient",
    "OrthancError",
    "OrthancUnavailableError",
    "RetryPolicy",
    "read_credentials",
]

log = logging.getLogger(__name__)


class OrthancError(LungsliceError):
    """Orthanc answered a request with an error that retrying will not fix (4xx)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.status))


class OrthancUnavailableError(OrthancError):
    """Orthanc could not be reached, or kept answering 5xx, after the bounded retries."""


@dataclass(frozen=True)
class Credentials:
    """HTTP basic credentials for Orthanc.

    Attributes
    ----------
    username, password : str
        The account (Orthanc's ``RegisteredUsers``).
    """

    username: str
    password: str

    def header(self) -> str:
        """The ``Authorization`` header value."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r}, password='***')"


def read_credentials(path: str | Path) -> Credentials:
    """Read ``username:password`` (one line) or ``{"username": ..., "password": ...}`` JSON.

    Parameters
    ----------
    path : str or Path
        A file readable by the service only (mode 600 is advised; a file that
        others can read is accepted with a warning).

    Raises
    ------
    ConfigError
        If the file is missing or holds neither form.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(
            f"credentials file {p}: cannot be read ({err.strerror or err}). Fix: write "
            "'username:password' on one line into a file only the service user can read "
            "(chmod 600) and pass it with --credentials."
        ) from None
    if p.stat().st_mode & 0o077:
        log.warning("credentials file %s can be read by other users; chmod 600 it", p)
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return Credentials(str(data["username"]), str(data["password"]))
        except (ValueError, KeyError, TypeError):
            pass
    else:
        user, sep, password = text.partition(":")
        if sep and user and "\n" not in text:
            return Credentials(user, password)
    raise ConfigError(
        f"credentials file {p}: expected 'username:password' on one line or JSON "
        '{"username": ..., "password": ...}, got neither. Fix: rewrite the file in one of '
        "these forms."
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing request is retried.

    Attributes
    ----------
    attempts : int
        Tries per request, the first included (>= 1).
    initial_delay_s, max_delay_s : float
        Backoff before the second try, doubled after each failure up to the cap.
    timeout_s : float
        Socket timeout of one request.
    """

    attempts: int = 6
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts: expected >= 1, got {self.attempts}")
        if not (self.initial_delay_s >= 0 and self.max_delay_s >= self.initial_delay_s):
            raise ConfigError(
                "RetryPolicy: expected 0 <= initial_delay_s <= max_delay_s, got "
                f"{self.initial_delay_s} and {self.max_delay_s}"
            )

    def delays(self) -> Iterator[float]:
        """The waits between tries (``attempts - 1`` of them)."""
        delay = self.initial_delay_s
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2.0, self.max_delay_s)


def _multipart(parts: Sequence[bytes], content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii"))
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return b"".join(chunks), header


class OrthancClient:
    """Orthanc's REST API and DICOMweb (STOW-RS) at one base URL.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:8042``.
    credentials : Credentials or None
        HTTP basic credentials; None only for a server without authentication.
    retry : RetryPolicy
        Backoff on connection errors and 5xx answers.
    dicomweb_root : str
        Path of the DICOMweb plugin (Orthanc's default ``/dicom-web``).
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        retry: RetryPolicy = RetryPolicy(),
        dicomweb_root: str = "/dicom-web",
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"Orthanc URL {url!r}: expected http(s)://HOST:PORT. Fix: pass e.g. "
                "--orthanc http://127.0.0.1:8042"
            )
        if parsed.username or parsed.password:
            raise ConfigError(
                "Orthanc URL: credentials in the URL are refused (they end up in process "
                "listings and shell history). Fix: put 'username:password' into a file "
                "(chmod 600) and pass --credentials FILE."
            )
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.retry = retry
        self.dicomweb_root = "/" + dicomweb_root.strip("/")

    # -- transport ----------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> bytes:
        """Send one request, retrying connection errors and 5xx; return the body.

        Raises
        ------
        OrthancUnavailableError
            After ``retry.attempts`` failed tries.
        OrthancError
            On a 4xx answer (not retried).
        """
        policy = retry or self.retry
        all_headers = dict(headers or {})
        if self.credentials is not None:
            all_headers["Authorization"] = self.credentials.header()
        delays = policy.delays()
        last = ""
        for attempt in range(1, policy.attempts + 1):
            req = urllib.request.Request(
                self.url + path, data=body, headers=all_headers, method=method
            )
            try:
                with urllib.request.urlopen(req, timeout=policy.timeout_s) as resp:
                    return bytes(resp.read())
            except urllib.error.HTTPError as err:
                if err.code < 500:
                    raise OrthancError(self._http_message(method, path, err), err.code) from None
                last = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                last = f"{type(reason).__name__}: {reason}"
            delay = next(delays, None)
            if delay is None:
                break
            log.warning(
                "%s %s: %s (try %d of %d); retrying in %.1f s",
                method,
                path.split("?")[0],
                last,
                attempt,
                policy.attempts,
                delay,
            )
            time.sleep(delay)
        raise OrthancUnavailableError(
            f"Orthanc at {self.url}: {method} {path.split('?')[0]} failed {policy.attempts} "
            f"times (last: {last}). Fix: check that Orthanc runs and answers at this URL; the "
            "service retries by itself."
        )

    def _http_message(self, method: str, path: str, err: urllib.error.HTTPError) -> str:
        where = f"Orthanc at {self.url}: {method} {path.split('?')[0]} answered HTTP {err.code}"
        if err.code == 401:
            return where + ". Fix: check the username and password in the --credentials file."
        if err.code == 404:
            return where + " (not found)."
        return where + "."

    def get_json(self, path: str, retry: RetryPolicy | None = None) -> Any:
        """GET ``path`` and parse the JSON answer."""
        return json.loads(self.request("GET", path, retry=retry))

    # -- REST resources -----------------------------------------------------------------
    def system(self, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``/system``: name and version; a cheap check that Orthanc answers."""
        return dict(self.get_json("/system", retry=retry))

    def changes(self, since: int, limit: int = 100) -> dict[str, Any]:
        """``/changes?since=&limit=``: ``Changes``, ``Done`` and ``Last``."""
        return dict(self.get_json(f"/changes?since={int(since)}&limit={int(limit)}"))

    def study(self, study_id: str) -> dict[str, Any]:
        """``/studies/{id}``: main tags and the series' identifiers."""
        return dict(self.get_json(f"/studies/{_id(study_id)}"))

    def series(self, series_id: str) -> dict[str, Any]:
        """``/series/{id}``: main tags and the instances' identifiers."""
        return dict(self.get_json(f"/series/{_id(series_id)}"))

    def studies(self) -> list[str]:
        """Identifiers of every study Orthanc holds."""
        return [str(s) for s in self.get_json("/studies")]

    def download_series(self, series_id: str, folder: Path) -> list[Path]:
        """Write a series' instances into ``folder`` as ``00000.dcm``, ``00001.dcm``, ...

        One ZIP request (``/series/{id}/archive``); the archive's folder names
        (which carry patient names) are dropped.
        """
        data = self.request("GET", f"/series/{_id(series_id)}/archive")
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                for n, member in enumerate(members):
                    path = folder / f"{n:05d}.dcm"
                    path.write_bytes(archive.read(member))
                    written.append(path)
        except (zipfile.BadZipFile, EOFError) as err:
            # a connection cut mid-answer (Orthanc stopping): worth another try later
            raise OrthancUnavailableError(
                f"Orthanc at {self.url}: the archive of series {series_id} arrived incomplete "
                f"({err}). Fix: none needed if Orthanc was restarting; the study is retried."
            ) from None
        return written

    def delete(self, path: str) -> None:
        """DELETE a resource (``/studies/{id}``, ``/series/{id}``)."""
        self.request("DELETE", path)

    # -- storing ------------------------------------------------------------------------
    def store_rest(self, dicom: bytes) -> dict[str, Any]:
        """POST one instance to ``/instances``; Orthanc's answer (``ID``, ``ParentStudy``)."""
        answer = self.request(
            "POST", "/instances", body=dicom, headers={"Content-Type": "application/dicom"}
        )
        return dict(json.loads(answer))

    def store_stow(self, instances: Sequence[bytes], study_uid: str | None = None) -> None:
        """STOW-RS ``instances`` (Part 10 bytes) into ``/dicom-web/studies[/{uid}]``.

        Raises
        ------
        OrthancError
            If the server reports a failed instance (``FailedSOPSequence``).
        """
        body, content_type = _multipart(instances, "application/dicom")
        path = f"{self.dicomweb_root}/studies" + (f"/{study_uid}" if study_uid else "")
        answer = self.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        if not answer.strip():
            return
        payload = json.loads(answer)
        failed = payload.get("00081198", {}).get("Value", []) if isinstance(payload, dict) else []
        if failed:
            reasons = sorted({str(f.get("00081197", {}).get("Value", ["?"])[0]) for f in failed})
            raise OrthancError(
                f"Orthanc at {self.url}: STOW-RS refused {len(failed)} of {len(instances)} "
                f"instance(s) (failure reasons {', '.join(reasons)}). Fix: check Orthanc's log."
            )


def _id(identifier: str) -> str:
    """An Orthanc identifier, checked so it cannot change the URL path."""
    if not identifier or any(c not in "0123456789abcdef-" for c in identifier):
        raise ConfigError(f"not an Orthanc identifier: {identifier!r}")
    return identifier
