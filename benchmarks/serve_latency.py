"""Latency of lungslice serve: a CT study stored into Orthanc -> its results stored back.

Starts a private Orthanc (127.0.0.1, auth on, StableAge ``--stable-age``),
runs the service in this process (one worker), waits until the worker has
loaded its model (reported apart: a running service pays it once, not per
study), then uploads ``--repeat`` copies of one study (new UIDs each time) by
STOW-RS, one after the other. For each it prints

- ``latency``: from the last instance stored until the results are stored and
  checked (the state says ``processed``): the issue's figure;
- where it went: ``stable`` (Orthanc's StableAge and its check, plus the
  change-feed poll: last instance -> study queued), ``queue`` (queued ->
  a worker starts it), then the worker's stages (``list``, ``fetch``,
  ``predict`` with predict's own stages, ``store``, ``verify``);

then the medians, the peak RSS of this process (the service and its model;
the uploader's buffers included, so an upper bound for the worker) and the
load average. ``--compare-fetch`` also times, on the first study, the three
ways to read it (Orthanc's ZIP archive, which the service used before;
``/instances/{id}/file`` per instance, now ``--fetch rest``; WADO-RS,
``--fetch dicomweb``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_latency.py \\
        --model demo-output/model --study demo-output/data/LIDC-IDRI/LIDC-IDRI-0883 \\
        --slices 300 --repeat 5 [--fetch dicomweb] [--compare-fetch]

Timings on a shared machine are upper bounds; the script prints the load average.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from lungslice.serve.fetch import DicomwebFetcher, RestFetcher
from lungslice.serve.local import LocalOrthanc
from lungslice.serve.orthanc import OrthancClient
from lungslice.serve.state import ServeState, StudyRecord
from lungslice.serve.worker import ServeConfig, Service

#: Worker stages in the order they run (predict's own stages are printed apart).
STAGES = ("list", "fetch", "predict", "store", "verify")


def _copy(template: list[pydicom.Dataset], n: int) -> tuple[str, list[bytes]]:
    study_uid = generate_uid(entropy_srcs=["latency", str(n), "study"])
    series_uid = generate_uid(entropy_srcs=["latency", str(n), "series"])
    out = []
    for i, src in enumerate(template):
        ds = copy.deepcopy(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["latency", str(n), str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return study_uid, out


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _wait_record(state: ServeState, uid: str, timeout_s: float) -> StudyRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [r for r in state.studies() if r.study_uid == uid]
        if done and done[0].status in ("processed", "failed", "skipped"):
            return done[0]
        time.sleep(0.05)
    raise TimeoutError(f"study {uid} not done within {timeout_s:.0f} s")


def _compare_fetch(client: OrthancClient, uid: str, tmp: Path) -> None:
    (study_id,) = [
        s for s in client.studies() if client.study(s)["MainDicomTags"]["StudyInstanceUID"] == uid
    ]
    (entry,) = [e for e in RestFetcher(client).list_series(study_id, uid) if e.modality == "CT"]
    assert entry.orthanc_id is not None
    t = time.monotonic()
    archive = client.request("GET", f"/series/{entry.orthanc_id}/archive")
    zipped = time.monotonic() - t
    for fetcher in (RestFetcher(client), DicomwebFetcher(client)):
        folder = tmp / f"fetch-{fetcher.name}"
        t = time.monotonic()
        files = fetcher.download(uid, entry, folder)
        took = time.monotonic() - t
        size = sum(f.stat().st_size for f in files) / 1e6
        shutil.rmtree(folder)
        print(f"  fetch {fetcher.name:8s}: {took:5.1f} s ({len(files)} files, {size:.0f} MB)")
    size = len(archive) / 1e6
    print(f"  fetch archive : {zipped:5.1f} s (/series/{{id}}/archive, {size:.0f} MB ZIP)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--study", type=Path, required=True, help="folder of one CT series")
    ap.add_argument("--slices", type=int, default=300, help="keep this many (by z), 0 = all")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fetch", choices=("rest", "dicomweb"), default="rest")
    ap.add_argument("--stable-age", type=int, default=1, help="Orthanc's StableAge (s)")
    ap.add_argument("--poll", type=float, default=0.5, help="change-feed poll interval (s)")
    ap.add_argument("--compare-fetch", action="store_true")
    args = ap.parse_args()

    files = sorted(args.study.rglob("*.dcm"))
    template = [pydicom.dcmread(f) for f in files]
    template.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    if args.slices:
        template = template[: args.slices]
    print(
        f"study: {len(template)} slices of {template[0].Rows}x{template[0].Columns}; "
        f"fetch {args.fetch}, StableAge {args.stable_age} s, poll {args.poll} s, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = LocalOrthanc(Path(tmp) / "orthanc", stable_age_s=args.stable_age)
        with orthanc:
            client = orthanc.client()
            state = ServeState(Path(tmp) / "state")
            config = ServeConfig(model=args.model, fetch=args.fetch, poll_interval_s=args.poll)
            service = Service(client, state, config)
            t = time.monotonic()
            thread = threading.Thread(target=service.run, daemon=True)
            thread.start()
            deadline = time.monotonic() + 600
            while not service.ready.wait(0.5):
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the service stopped or did not load its model in 600 s")
            print(f"model loaded by the worker in {time.monotonic() - t:.1f} s (once per worker)")
            for n in range(args.repeat):
                uid, data = _copy(template, n)
                t0 = time.time()
                for i in range(0, len(data), 64):
                    client.store_stow(data[i : i + 64])
                t_stored = time.time()
                record = _wait_record(state, uid, 1800)
                t_done = time.time()
                assert record.status == "processed", record
                assert record.seconds is not None
                claimed = _epoch(record.updated_at) - record.seconds
                row = {
                    "upload": t_stored - t0,
                    "latency": t_done - t_stored,
                    "stable": _epoch(record.queued_at) - t_stored,
                    "queue": claimed - _epoch(record.queued_at),
                    **record.timings,
                }
                rows.append(row)
                stages = ", ".join(f"{s} {row.get(s, 0.0):.1f}" for s in STAGES)
                inner = {
                    k.split(".", 1)[1]: v
                    for k, v in record.timings.items()
                    if k != "predict" and k.startswith("predict.")
                }
                # what predict's stages do not cover: its DICOM writers (KO, SR, SC)
                inner["outputs"] = row["predict"] - sum(inner.values())
                inner_text = ", ".join(f"{k} {v:.1f}" for k, v in inner.items() if v >= 0.05)
                print(
                    f"run {n + 1}: latency {row['latency']:.1f} s from the last instance stored "
                    f"(upload {row['upload']:.1f} s before it) = stable {row['stable']:.1f} + "
                    f"queue {row['queue']:.1f} + {stages} (predict: {inner_text}); "
                    f"load {os.getloadavg()[0]:.1f}"
                )
                if n == 0 and args.compare_fetch:
                    _compare_fetch(client, uid, Path(tmp))
            service.stop()
            thread.join(120)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
    print(
        f"median of {len(rows)}: latency {med['latency']:.1f} s (stable {med['stable']:.1f}, "
        f"queue {med['queue']:.1f}, "
        + ", ".join(f"{s} {med.get(s, 0.0):.1f}" for s in STAGES)
        + f"); upload {med['upload']:.1f} s; peak RSS {rss_gb:.2f} GB; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
