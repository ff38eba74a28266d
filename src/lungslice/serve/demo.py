"""``lungslice serve --start-orthanc``: the service next to a private Orthanc, end to end.

Starts :class:`~lungslice.serve.local.LocalOrthanc` (127.0.0.1, auth on,
remote access off, DICOM port disabled, ``TCP_NODELAY=1``), uploads the demo's
phantom studies by STOW-RS, runs the service until each of them is processed,
and prints the URL of Orthanc's web interface with the credentials file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lungslice.errors import ConfigError
from lungslice.serve.local import LocalOrthanc
from lungslice.serve.orthanc import OrthancClient
from lungslice.serve.state import ServeState
from lungslice.serve.worker import ServeConfig, Service

__all__ = ["demo_studies", "run_demo", "upload_study"]

#: Files of one study are sent in STOW-RS requests of at most this many instances.
STOW_BATCH = 64


def demo_studies(data: Path) -> list[Path]:
    """The study folders to upload: the demo's held-out patients, or every patient.

    ``make demo`` writes ``data/LIDC-IDRI/<patient>/`` and predicts on the
    held-out patients into ``predictions/<patient>/``; those are the studies
    the model never saw in training.

    Raises
    ------
    ConfigError
        If ``data`` holds no DICOM study.
    """
    root = data / "LIDC-IDRI" if (data / "LIDC-IDRI").is_dir() else data
    patients = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    held_out = data.parent / "predictions"
    if held_out.is_dir():
        names = {p.name for p in held_out.iterdir() if p.is_dir()}
        patients = [p for p in patients if p.name in names] or patients
    patients = [p for p in patients if next(p.rglob("*.dcm"), None) is not None]
    if not patients:
        raise ConfigError(
            f"--data {data}: no study folders with DICOM files. Fix: run `make demo` first "
            "(it writes demo-output/data and demo-output/model), or pass --data and --model."
        )
    return patients


def upload_study(client: OrthancClient, folder: Path) -> int:
    """STOW-RS every ``*.dcm`` under ``folder``; the number of instances sent."""
    files = sorted(folder.rglob("*.dcm"))
    for i in range(0, len(files), STOW_BATCH):
        client.store_stow([f.read_bytes() for f in files[i : i + STOW_BATCH]])
    return len(files)


def run_demo(
    model: Path,
    data: Path,
    state: Path,
    *,
    workers: int = 1,
    keep_running: bool = True,
    echo: Callable[[str], Any] = print,
) -> dict[str, int]:
    """Start Orthanc under ``state/orthanc``, upload the studies, process them.

    Parameters
    ----------
    model, data, state : Path
        Model bundle, demo data folder, and the folder for Orthanc and the service.
    workers : int
        Studies processed at once.
    keep_running : bool
        Keep Orthanc up after processing until Ctrl-C (to look at the web interface).
    echo : callable
        Where progress lines go.

    Returns
    -------
    dict
        Studies per status.
    """
    if not (model / "model.json").exists():
        raise ConfigError(
            f"--model {model}: no model bundle (model.json). Fix: run `make demo` first, or "
            "pass --model."
        )
    studies = demo_studies(data)
    orthanc = LocalOrthanc(state / "orthanc", stable_age_s=1)
    orthanc.start()
    try:
        client = orthanc.client()
        echo(f"Orthanc {orthanc.url} (127.0.0.1 only, auth on, DICOM port off)")
        t0 = time.perf_counter()
        for folder in studies:
            n = upload_study(client, folder)
            echo(f"uploaded {folder.name}: {n} instances (STOW-RS)")
        expected = len(client.studies())
        service = Service(
            client, ServeState(state / "service"), ServeConfig(model=model, workers=workers)
        )

        def all_done(st: ServeState, _feed_done: bool) -> bool:
            c = st.counts()
            return c["processed"] + c["failed"] + c["skipped"] >= expected

        service.run(until=all_done)
        counts = service.state.counts()
        echo(
            f"{counts['processed']} processed, {counts['skipped']} skipped, "
            f"{counts['failed']} failed in {time.perf_counter() - t0:.1f} s"
        )
        for r in service.state.studies():
            echo(f"  {r.status}: {r.study_uid} {r.reason or ''} {'; '.join(r.outputs)}")
        echo(
            f"web interface: {orthanc.url}/app/explorer.html (user and password in "
            f"{orthanc.credentials_path})"
        )
        if keep_running:
            echo("Orthanc keeps running; Ctrl-C stops it")
            try:
                while orthanc.process is not None and orthanc.process.poll() is None:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
        return counts
    finally:
        orthanc.stop()
