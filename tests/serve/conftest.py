"""A real Orthanc per test (child process on 127.0.0.1, auth on) and a tiny trained bundle.

Orthanc comes from Debian's ``orthanc`` and ``orthanc-dicomweb`` packages
(``make test`` installs them); without them the tests are skipped, saying so.
"""

from __future__ import annotations

import copy
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungslice.errors import LungsliceError
from lungslice.serve.orthanc import OrthancClient, Patience, RetryPolicy
from lungslice.serve.state import ServeState
from lungslice.serve.worker import ServeConfig, Service
from tests.helpers import PIPELINE_PATIENTS, Pipeline

#: A phantom of one malignant nodule (15 slices of 256 x 256, 35 mm of z) and two for training.
PATIENTS = PIPELINE_PATIENTS

#: Quick retries: tests stop Orthanc on purpose.
FAST_RETRY = RetryPolicy(attempts=4, initial_delay_s=0.2, max_delay_s=1.0, timeout_s=30.0)

#: Waiting for an Orthanc that does not answer: quick tries, at most a minute.
PATIENT = Patience(max_wait_s=60.0, max_tries=200, initial_delay_s=0.2, max_delay_s=1.0)


def _orthanc_or_skip() -> None:
    from lungslice.serve.local import find_orthanc

    try:
        find_orthanc()
    except LungsliceError as err:
        pytest.skip(f"Orthanc is not installed ({err}); `make test` installs it")


@dataclass(frozen=True)
class Bundle:
    model: Path
    study: list[Dataset]  # the CT series every test study is copied from

    def predictor(self) -> object:
        from lungslice.prediction import Predictor

        return Predictor(self.model)


@pytest.fixture(scope="session")
def bundle(pipeline: Pipeline) -> Bundle:
    """The session's small whole-slice bundle (``tests/conftest.py``) and its first study."""
    _orthanc_or_skip()
    files = sorted(pipeline.study(PATIENTS[0]).rglob("*.dcm"))
    return Bundle(pipeline.model, [pydicom.dcmread(f) for f in files])


@pytest.fixture(scope="session")
def shared_predictor(bundle: Bundle) -> object:
    """One predictor for the single-worker services (loading it takes seconds)."""
    return bundle.predictor()


def study_copy(template: list[Dataset], n: int, *, modality: str = "CT") -> list[Dataset]:
    """Study number ``n``: the template with new UIDs, patient 'SERVE-n' (named, to test PHI)."""
    study_uid = generate_uid(entropy_srcs=["serve-test", str(n), "study"])
    series_uid = generate_uid(entropy_srcs=["serve-test", str(n), "series"])
    out = []
    for i, src in enumerate(template):
        ds = copy.deepcopy(src)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["serve-test", str(n), str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"SERVE-{n:03d}"
        ds.PatientName = f"Doe^Jane{n:03d}"
        ds.PatientBirthDate = "19500101"
        if modality != "CT":
            ds.Modality = modality
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        out.append(ds)
    return out


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def upload(client: OrthancClient, study: list[Dataset]) -> None:
    client.store_stow([part10(ds) for ds in study])


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[object]:
    """A fresh Orthanc (StableAge 1 s), stopped through its own process handle afterwards."""
    _orthanc_or_skip()
    from lungslice.serve.local import LocalOrthanc

    server = LocalOrthanc(tmp_path / "orthanc", stable_age_s=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.process is None


class CountingFactory:
    """A predictor factory that counts its calls (the service loads once per worker)."""

    def __init__(self, predictor: object) -> None:
        self.predictor = predictor
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.predictor


def make_service(
    orthanc: object,
    bundle: Bundle,
    state: Path,
    predictor: object | None,
    workers: int = 1,
    *,
    patience: Patience = PATIENT,
    fetch: str = "rest",
) -> Service:
    """A service on ``orthanc`` (``predictor``: an object, a factory, or None to load one)."""
    client = orthanc.client(FAST_RETRY)  # type: ignore[attr-defined]
    config = ServeConfig(
        model=bundle.model,
        workers=workers,
        poll_interval_s=0.2,
        max_pause_s=2.0,
        patience=patience,
        fetch=fetch,  # type: ignore[arg-type]
    )
    factory: Callable[[], object] | None
    if predictor is None or isinstance(predictor, CountingFactory):
        factory = predictor
    else:
        factory = lambda: predictor  # noqa: E731
    return Service(client, ServeState(state), config, predictor_factory=factory)  # type: ignore[arg-type]


def run_until(service: Service, done: Callable[[ServeState], bool], timeout_s: float) -> float:
    """Run ``service`` until ``done`` holds (or ``timeout_s`` passes); the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    guard = threading.Timer(timeout_s + 60.0, service.stop)  # a study hung past the deadline
    guard.start()
    try:
        service.run(until=lambda st, _done: done(st) or time.monotonic() > deadline)
    finally:
        guard.cancel()
    return time.monotonic() - t0


def finished(n: int) -> Callable[[ServeState], bool]:
    def check(st: ServeState) -> bool:
        c = st.counts()
        return c["processed"] + c["failed"] + c["skipped"] >= n

    return check


def result_series(client: OrthancClient, study_id: str) -> list[dict]:
    """The study's lungslice series (Orthanc /series records)."""
    from lungslice.serve.results import is_result_series

    series = [client.series(s) for s in client.study(study_id)["Series"]]
    return [s for s in series if is_result_series(s["MainDicomTags"].get("SeriesDescription"))]
