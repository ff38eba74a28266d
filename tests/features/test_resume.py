"""Crash safety: SIGKILL the CLI mid-run, rerun, nothing done is recomputed, no partial file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungslice.testing import write_ct_series

N_SERIES = 6
CLI = [sys.executable, "-c", "from lungslice.cli import main; main()"]


def _done(key_dir: Path) -> dict[str, tuple[int, int]]:
    """Series with both files in place -> (inode, mtime) of their .npy."""
    out = {}
    for table in key_dir.glob("*.slices.parquet"):
        uid = table.name.removesuffix(".slices.parquet")
        npy = key_dir / f"{uid}.npy"
        if npy.is_file():
            st = npy.stat()
            out[uid] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path: Path) -> None:
    data = tmp_path / "dicom"
    for i in range(N_SERIES):
        write_ct_series(
            data / f"P{i}", n_slices=20, rows=64, columns=64, patient_id=f"P{i}", seed=i
        )
    work = tmp_path / "work"
    # The kill comes right after the first series is committed; the other five
    # (~0.3 s each at 128 px FP32) are still to do.
    args = [*CLI, "extract", str(data), "--out", str(work), "--precision", "fp32", "--size", "128"]
    env = {**os.environ, "COLUMNS": "200"}
    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=sink, env=env)
    features = work / "features"
    deadline = time.monotonic() + 240
    killed_with: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = list(features.glob("*")) if features.is_dir() else []
        if dirs and (done := _done(dirs[0])):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_with = done
            break
        time.sleep(0.01)
    else:
        proc.kill()
        proc.wait()
        pytest.fail(f"extraction ended before it could be killed: {log.read_text()[-2000:]}")
    assert proc.returncode == -signal.SIGKILL
    key_dir = next(features.glob("*"))
    # What the killed run left: done series complete, nothing partial under a final name.
    done_after_kill = _done(key_dir)
    assert 1 <= len(done_after_kill) < N_SERIES
    for npy in key_dir.glob("*.npy"):
        assert np.load(npy).shape[1] == 1280
    for table in key_dir.glob("*.parquet"):
        pd.read_parquet(table)
    assert set(killed_with) <= set(done_after_kill)

    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = re.search(r"series: (\d+) computed, (\d+) already cached, 0 failed", rerun.stdout)
    assert m, rerun.stdout
    assert int(m[2]) == len(done_after_kill)
    assert int(m[1]) == N_SERIES - len(done_after_kill)

    final = _done(key_dir)
    assert len(final) == N_SERIES
    for uid, stamp in done_after_kill.items():
        assert final[uid] == stamp, f"{uid} was recomputed"
    assert not [p.name for p in key_dir.iterdir() if p.name.endswith(".tmp")]
    manifest = pd.read_parquet(key_dir / "manifest.parquet")
    assert len(manifest) == N_SERIES and (manifest["status"] == "done").all()
    for uid in final:
        assert np.load(key_dir / f"{uid}.npy").shape == (48, 1280)
