"""Latency of lungslice serve: STOW-RS of a CT study -> its results stored in Orthanc.

Starts a private Orthanc (127.0.0.1, auth on, StableAge 1 s), runs the service
in this process (one worker), and uploads ``--repeat`` copies of one study
(new UIDs each time), one after the other. For each it measures the seconds
from the start of the STOW-RS upload until the service has stored the
results (its state says ``processed``); prints every run, the median, and
the peak RSS of this process (the service and its model; the uploader's
buffers included, so an upper bound for the worker).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_latency.py \\
        --model demo-output/model --study demo-output/data/LIDC-IDRI/LIDC-IDRI-0883 \\
        --slices 300 --repeat 5

Timings on a shared machine are upper bounds; the script prints the load average.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from lungslice.serve.local import LocalOrthanc
from lungslice.serve.state import ServeState
from lungslice.serve.worker import ServeConfig, Service


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--study", type=Path, required=True, help="folder of one CT series")
    ap.add_argument("--slices", type=int, default=300, help="keep this many (by z), 0 = all")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    files = sorted(args.study.rglob("*.dcm"))
    template = [pydicom.dcmread(f) for f in files]
    template.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    if args.slices:
        template = template[: args.slices]
    print(f"study: {len(template)} slices of {template[0].Rows}x{template[0].Columns}")
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = LocalOrthanc(Path(tmp) / "orthanc", stable_age_s=1)
        with orthanc:
            client = orthanc.client()
            state = ServeState(Path(tmp) / "state")
            service = Service(client, state, ServeConfig(model=args.model, poll_interval_s=0.2))
            thread = threading.Thread(target=service.run, daemon=True)
            thread.start()
            time.sleep(1.0)
            runs = []
            for n in range(args.repeat):
                uid, data = _copy(template, n)
                t0 = time.monotonic()
                for i in range(0, len(data), 64):
                    client.store_stow(data[i : i + 64])
                upload = time.monotonic() - t0
                deadline = t0 + 1800
                record = None
                while time.monotonic() < deadline:
                    done = [r for r in state.studies() if r.study_uid == uid]
                    if done and done[0].status in ("processed", "failed", "skipped"):
                        record = done[0]
                        break
                    time.sleep(0.05)
                took = time.monotonic() - t0
                assert record is not None and record.status == "processed", record
                runs.append(took)
                print(
                    f"run {n + 1}: {took:.1f} s STOW-RS -> results stored "
                    f"(upload {upload:.1f} s, service {record.seconds:.1f} s, "
                    f"load {os.getloadavg()[0]:.1f})"
                )
            service.stop()
            thread.join(60)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"median of {len(runs)}: {statistics.median(runs):.1f} s; peak RSS {rss_gb:.2f} GB")


if __name__ == "__main__":
    main()
