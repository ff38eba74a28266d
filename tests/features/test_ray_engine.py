"""The Ray engine vs the local one: same cache files, resume, failures, killed actor, two nodes.

Real Ray, no mocks: one local Ray instance (2 CPUs, no dashboard) for the
session; the two-node test starts its own head and worker on 127.0.0.1 with
``ray start`` and stops them through their own process handles.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lungslice.errors import ConfigError
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import WholeSliceWork, extract_dataset, find_series
from lungslice.features.inputs import InputConfig
from lungslice.features.ray_engine import RayOptions, RayScheduler, ray_options
from lungslice.testing import write_ct_series

if os.environ.get("CI"):
    import ray  # CI installs the extra (`make test`): a missing Ray is a failure there
else:
    ray = pytest.importorskip("ray", reason="pip install 'lungslice[ray]'")

# fp32 and tiny inputs: quick on 2 cores, and local and Ray agree to float rounding.
CONFIG = FeatureConfig(inputs=InputConfig(size=64), batch_size=8, precision="fp32")
COMPARED = ["series_uid", "patient_id", "status", "reason", "n_source_slices", "n_slices"]


def _cohort(root: Path, n: int = 4) -> Path:
    for i in range(n):
        write_ct_series(root / f"P{i}", n_slices=6, rows=40, columns=40, patient_id=f"P{i}", seed=i)
    return root


def _corrupt(root: Path) -> str:
    """A series with one truncated file: the index rejects it, with the reason."""
    files = write_ct_series(root / "BAD", n_slices=6, rows=40, columns=40, patient_id="BAD", seed=9)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 1500])
    return "BAD"


class _BreakOnStart:
    """Progress callback that corrupts a file after indexing: the series fails to load."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.labels: list[str] = []

    def __call__(self, done: int, total: int, label: str = "") -> None:
        if not self.labels:
            self.path.write_bytes(b"not a DICOM file" * 10)
        self.labels.append(label)


def _npy(cache_dir: Path) -> dict[str, np.ndarray]:
    return {p.name.removesuffix(".npy"): np.load(p) for p in cache_dir.glob("*.npy")}


def test_import_lungslice_never_imports_ray() -> None:
    code = (
        "import sys, lungslice, lungslice.batch, lungslice.features.extract, "
        "lungslice.features.candidates, lungslice.features.ray_engine, lungslice.cli.commands; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_ray_flags_need_the_ray_engine() -> None:
    assert ray_options("local") is None
    assert ray_options("ray", "127.0.0.1:6379", 3, 0.5) == RayOptions(
        address="127.0.0.1:6379", actors=3, gpus_per_actor=0.5
    )
    with pytest.raises(ConfigError, match=r"--address, --actors only apply to --engine ray"):
        ray_options("local", "auto", 2)
    with pytest.raises(ConfigError, match=r"RayOptions.retries: expected >= 0, got -1"):
        RayOptions(retries=-1)


@pytest.mark.slow
def test_ray_equals_local_and_failures_are_recorded(tmp_path: Path, ray_session: Any) -> None:
    data = _cohort(tmp_path / "dicom")
    bad = _corrupt(tmp_path / "dicom")
    gone = data / "P3" / "0002.dcm"
    saved = gone.read_bytes()
    local = extract_dataset(data, tmp_path / "local", CONFIG, _BreakOnStart(gone), keep_going=True)
    gone.write_bytes(saved)
    progress = _BreakOnStart(gone)
    remote = extract_dataset(
        data,
        tmp_path / "ray",
        CONFIG,
        progress,
        keep_going=True,
        engine="ray",
        ray=RayOptions(),
    )
    assert remote.engine == "ray" and remote.key == local.key
    assert remote.cache_dir.name == local.cache_dir.name
    # The same manifest rows (timings and worker identity aside).
    a = local.manifest[COMPARED].sort_values("series_uid").reset_index(drop=True)
    b = remote.manifest[COMPARED].sort_values("series_uid").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    rejected = remote.manifest[remote.manifest["status"] == "rejected"]
    assert list(rejected["patient_id"]) == [bad]
    assert "unreadable file" in rejected["reason"].iloc[0]
    failed = remote.manifest[remote.manifest["status"] == "failed"]
    assert list(failed["patient_id"]) == ["P3"]
    # The loader's reason (the unreadable file leaves a gap), the same as in the local run.
    assert (
        "gap" in failed["reason"].iloc[0]
        and failed["series_uid"].iloc[0] in failed["reason"].iloc[0]
    )
    assert (remote.manifest["status"] == "done").sum() == 3
    assert remote.manifest.loc[remote.manifest["status"] == "done", "node_id"].str.len().min() > 0
    # All-close features, the same slice tables.
    fa, fb = _npy(local.cache_dir), _npy(remote.cache_dir)
    assert sorted(fa) == sorted(fb) and len(fa) == 3
    for uid in fa:
        np.testing.assert_allclose(fa[uid], fb[uid], rtol=1e-3, atol=1e-3)
        pd.testing.assert_frame_equal(
            pd.read_parquet(local.cache_dir / f"{uid}.slices.parquet"),
            pd.read_parquet(remote.cache_dir / f"{uid}.slices.parquet"),
        )
    assert any("slices/s, ETA" in s and "1 failed" in s for s in progress.labels)
    # Interchangeable: a local run over the Ray run's cache recomputes only the failed series.
    gone.write_bytes(saved)
    again = extract_dataset(data, tmp_path / "ray", CONFIG)
    assert sorted(again.reused) == sorted(fa)
    assert again.computed == list(failed["series_uid"])


class _Stop(Exception):
    pass


def _settle(folder: Path, quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
    """Wait (bounded) until no file in ``folder`` changes: actors of a stopped run wind down."""
    deadline = time.monotonic() + limit_s
    last: dict[str, int] = {}
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        now = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_ray_resume_recomputes_nothing(tmp_path: Path, ray_session: Any) -> None:
    data = _cohort(tmp_path / "dicom", n=5)
    work = tmp_path / "work"

    def stop_after_two(done: int, total: int, label: str = "") -> None:
        if "slices/s" in label and done >= 2:
            raise _Stop

    with pytest.raises(_Stop):
        extract_dataset(data, work, CONFIG, stop_after_two, engine="ray", ray=RayOptions())
    (key_dir,) = (work / "features").iterdir()
    _settle(key_dir)
    # Done = the slice table is in place (written last). A series an actor was writing when
    # the run stopped may have left its .npy alone: that one is not done and is recomputed.
    done = sorted(p.name.removesuffix(".slices.parquet") for p in key_dir.glob("*.slices.parquet"))
    assert len(done) >= 2
    if len(done) == 5:
        # the two actors finished every series before the stop reached them: take back the
        # commit marker of two, which is what a run stopped while writing them leaves
        for uid in done[3:]:
            (key_dir / f"{uid}.slices.parquet").unlink()
        done = done[:3]
    before = {uid: (key_dir / f"{uid}.npy").stat().st_mtime_ns for uid in done}
    second = extract_dataset(data, work, CONFIG, engine="ray", ray=RayOptions())
    assert sorted(second.reused) == sorted(before)
    assert not set(second.computed) & set(before)
    assert len(second.computed) + len(second.reused) == 5
    after = {uid: (key_dir / f"{uid}.npy").stat().st_mtime_ns for uid in before}
    assert after == before  # nothing done was rewritten
    assert (second.manifest["status"] == "done").all() and len(second.manifest) == 5


class CrashOnce:
    """Wraps a work: the actor process dies once in the middle of series ``uid``."""

    def __init__(self, work: Any, uid: str, marker: Path) -> None:
        self.work, self.uid, self.marker = work, uid, marker

    def setup(self) -> None:
        self.work.setup()

    def load(self, job: Any) -> Any:
        return self.work.load(job)

    def compute(self, job: Any, loaded: Any, load_s: float) -> dict[str, Any]:
        if job.series_uid == self.uid and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)  # the process dies: no exception, no cleanup
        return dict(self.work.compute(job, loaded, load_s))

    def failed_row(self, job: Any, reason: str) -> dict[str, Any]:
        return dict(self.work.failed_row(job, reason))


@pytest.mark.slow
def test_killed_actor_series_is_retried(tmp_path: Path, ray_session: Any) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    data = _cohort(tmp_path / "dicom", n=3)
    jobs = find_series(data)
    victim = jobs[1].series_uid
    marker = tmp_path / "died.pid"
    work = CrashOnce(WholeSliceWork(CONFIG, tmp_path / "work"), victim, marker)
    rows = {r["series_uid"]: r for r in RayScheduler(RayOptions(retries=1)).map(work, jobs)}
    assert marker.is_file()  # it did die
    assert sorted(rows) == sorted(j.series_uid for j in jobs)
    assert {r["status"] for r in rows.values()} == {"done"}
    assert rows[victim]["worker_pid"] != int(marker.read_text())
    assert rows[victim]["actor_restarted"] is True
    assert (tmp_path / "work" / "features" / CONFIG.key / f"{victim}.npy").is_file()


@pytest.mark.slow
def test_candidates_on_ray_equal_local(tmp_path: Path, ray_session: Any) -> None:
    from lungslice.candidates.detect import DetectorConfig
    from lungslice.features.candidates import CandidateConfig, extract_candidates
    from lungslice.lidc.db import read_database
    from lungslice.phantom import PhantomConfig, synthesize

    patients = ("LIDC-IDRI-0001", "LIDC-IDRI-0078")
    scans = read_database(patient_ids=patients)
    phantom = PhantomConfig(seed=1, matrix=256, z_margin_mm=6.0)
    synthesize(tmp_path / "data", patients, phantom, scans=scans)
    config = CandidateConfig(
        features=FeatureConfig(precision="fp32"), detector=DetectorConfig(max_candidates=8)
    )
    local = extract_candidates(tmp_path / "data", tmp_path / "local", config)
    remote = extract_candidates(
        tmp_path / "data", tmp_path / "ray", config, engine="ray", ray=RayOptions()
    )
    cols = ["series_uid", "status", "reason", "n_slices", "n_lung_slices", "n_candidates"]
    a = local.manifest[cols].sort_values("series_uid").reset_index(drop=True)
    b = remote.manifest[cols].sort_values("series_uid").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert (b["status"] == "done").all() and len(b) == len(patients)
    fa, fb = _npy(local.cache_dir), _npy(remote.cache_dir)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        np.testing.assert_allclose(fa[name], fb[name], rtol=1e-3, atol=1e-3)
    again = extract_candidates(tmp_path / "data", tmp_path / "ray", config)
    assert again.computed == [] and len(again.reused) == len(patients)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_two_nodes_on_one_machine(tmp_path: Path) -> None:
    """A head and a worker node on 127.0.0.1; `lungslice extract --engine ray --address`."""
    data = _cohort(tmp_path / "dicom", n=4)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block"]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(logs / "head.log", "wb") as sink:
            procs.append(
                subprocess.Popen(
                    [*ray_cli, "start", "--head", "--port", str(port), "--include-dashboard",
                     "false", *common],
                    stdout=sink, stderr=sink,
                )
            )  # fmt: skip
        with open(logs / "worker.log", "wb") as sink:
            procs.append(
                subprocess.Popen(
                    [*ray_cli, "start", "--address", address, *common], stdout=sink, stderr=sink
                )
            )
        deadline = time.monotonic() + 120
        status = ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            probe = subprocess.run(
                [*ray_cli, "status", "--address", address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            status = probe.stdout
            if status.count("node_") >= 2:
                break
            time.sleep(2)
        assert status.count("node_") >= 2, (status, (logs / "worker.log").read_text()[-2000:])
        work = tmp_path / "work"
        cli = [sys.executable, "-c", "from lungslice.cli import main; main()"]
        args = ["extract", str(data), "--out", str(work), "--precision", "fp32", "--size", "64"]
        run = subprocess.run(
            [*cli, *args, "--batch-size", "8", "--engine", "ray", "--address", address],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        for proc in reversed(procs):
            _stop(proc)
    manifest = pd.read_parquet(next((work / "features").iterdir()) / "manifest.parquet")
    assert (manifest["status"] == "done").all() and len(manifest) == 4
    assert manifest["node_id"].nunique() == 2  # both nodes did work
    local = extract_dataset(data, tmp_path / "local", CONFIG)
    fa, fb = _npy(local.cache_dir), _npy(next((work / "features").iterdir()))
    assert sorted(fa) == sorted(fb)
    for uid in fa:
        np.testing.assert_allclose(fa[uid], fb[uid], rtol=1e-3, atol=1e-3)
