"""A private Orthanc on 127.0.0.1 for the demo and the tests.

:class:`LocalOrthanc` writes a temporary configuration (authentication on,
remote access off, the DICOM port disabled or on a free high port, the
DICOMweb plugin loaded), starts Debian's ``Orthanc`` as a child process with
``TCP_NODELAY=1`` in its environment, waits until its REST API answers, and
stops it through its own process handle.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from lungslice.errors import LungsliceError
from lungslice.serve.orthanc import (
    Credentials,
    OrthancClient,
    OrthancError,
    RetryPolicy,
)

__all__ = ["DICOMWEB_PLUGIN_PATHS", "LocalOrthanc", "find_orthanc", "free_port"]

log = logging.getLogger(__name__)

#: Where Debian's ``orthanc-dicomweb`` puts the plugin.
DICOMWEB_PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)


class OrthancNotInstalledError(LungsliceError):
    """The Orthanc server (or its DICOMweb plugin) is not installed on this machine."""


def find_orthanc() -> tuple[str, str]:
    """Paths of the ``Orthanc`` executable and the DICOMweb plugin.

    Raises
    ------
    OrthancNotInstalledError
        Naming the Debian packages to install.
    """
    exe = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    plugin = next((p for p in DICOMWEB_PLUGIN_PATHS if Path(p).exists()), None)
    if exe is None or plugin is None:
        missing = "Orthanc" if exe is None else "its DICOMweb plugin"
        raise OrthancNotInstalledError(
            f"{missing} is not installed on this machine. Fix: apt-get install orthanc "
            "orthanc-dicomweb (Debian/Ubuntu), or point --orthanc at a running Orthanc."
        )
    return exe, plugin


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalOrthanc:
    """Orthanc as a child process, with its configuration and storage under ``folder``.

    Parameters
    ----------
    folder : str or Path
        Holds ``orthanc.json``, ``credentials`` (mode 600), ``storage/`` and
        ``orthanc.log``; reusing a folder keeps its studies across restarts.
    stable_age_s : int
        Seconds without a new instance before a study is ``StableStudy``
        (Orthanc's default is 60; small values suit a demo).
    dicom_port : bool
        Open the DICOM (C-STORE) port on a free high port; off by default.
    username : str
        The one account (its password is random, written to ``credentials``).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        stable_age_s: int = 1,
        dicom_port: bool = False,
        username: str = "lungslice",
    ) -> None:
        self.exe, self.plugin = find_orthanc()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "orthanc.json"
        self.credentials_path = self.folder / "credentials"
        self.log_path = self.folder / "orthanc.log"
        if self.credentials_path.exists():
            from lungslice.serve.orthanc import read_credentials

            self.credentials = read_credentials(self.credentials_path)
        else:
            self.credentials = Credentials(username, secrets.token_urlsafe(16))
            fd = os.open(self.credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.credentials.username}:{self.credentials.password}\n")
        self.stable_age_s = stable_age_s
        self.dicom_port: int | None = free_port() if dicom_port else None
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST API (and of the web interface, ``/app/explorer.html``)."""
        return f"http://127.0.0.1:{self.http_port}"

    def client(self, retry: RetryPolicy = RetryPolicy()) -> OrthancClient:
        """A client with this server's credentials."""
        return OrthancClient(self.url, self.credentials, retry)

    def write_config(self) -> Path:
        """Write ``orthanc.json`` for the current ports."""
        storage = self.folder / "storage"
        config = {
            "Name": "lungslice-demo",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.credentials.username: self.credentials.password},
            "DicomServerEnabled": self.dicom_port is not None,
            "DicomPort": self.dicom_port or 0,
            "DicomAet": "LUNGSLICE",
            "StableAge": self.stable_age_s,
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1"},
            "HttpCompressionEnabled": False,
            "StorageCompression": False,
            "SaveJobs": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
        }
        self.config_path.write_text(json.dumps(config, indent=1) + "\n")
        return self.config_path

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Orthanc and wait until its REST API answers.

        Raises
        ------
        LungsliceError
            If it exits or does not answer within ``timeout_s`` (its log's tail in the message).
        """
        if self.process is not None and self.process.poll() is None:
            return
        self.write_config()
        env = {**os.environ, "TCP_NODELAY": "1"}
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                [self.exe, str(self.config_path)],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.folder,
            )
        probe = self.client(RetryPolicy(attempts=1, timeout_s=2.0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                probe.system()
                log.info("Orthanc %s started (pid %d)", self.url, self.process.pid)
                return
            except OrthancError:
                time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise LungsliceError(
            f"Orthanc did not start within {timeout_s:.0f} s (config {self.config_path}); "
            f"its log ends with:\n{tail}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of Orthanc's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalOrthanc:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
