"""The service: follow Orthanc's change feed, predict on new CT studies, store results back.

One feed loop (the calling thread) reads ``/changes`` from the persistent
cursor and enqueues every ``StableStudy``; ``workers`` threads, each with its
own :class:`~lungslice.prediction.Predictor`, claim pending studies and for
each one

1. read the study's series from Orthanc; a study that already holds lungslice
   series of this model is skipped (so lungslice's own results, which make the
   study stable again, do not start a second run);
2. pick the CT series (a study without one is skipped with the modalities it
   holds as reason) and download them (:mod:`lungslice.serve.fetch`: Orthanc's
   REST ``/instances/{id}/file``, or DICOMweb QIDO-RS and WADO-RS);
3. run ``predict`` on them into a temporary folder, exactly as ``lungslice
   predict`` chooses and loads series;
4. check its DICOM outputs (:mod:`lungslice.serve.results`) and store them
   into the same study (STOW-RS, or REST ``/instances``), then check that they
   appear there.

The predictor is loaded once per worker, when the worker starts (predict's
DICOM writers are imported then too), and reused for every study
(:attr:`Service.ready` is set once all are loaded). Each
study's record keeps the seconds of its stages (list, fetch, predict and its
own stages, store, verify).

A study whose input is refused (corrupt instance, no usable CT) is failed with
the refusal as its reason and the worker goes on. When Orthanc cannot be
reached the study goes back to the queue and the worker waits (bounded
backoff per request, then a capped pause). The service waits for Orthanc at
start-up, and when it goes away mid-run, within :class:`~lungslice.serve.
orthanc.Patience` (tries and seconds, each try logged), and stops with
:class:`~lungslice.serve.orthanc.OrthancDownError` (naming the URL and what to
check) when Orthanc stays away longer; shorter outages it rides out by itself.

Logs carry Orthanc identifiers and StudyInstanceUIDs, never patient data.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lungslice.dicom.geometry import LoadConfig
from lungslice.errors import ConfigError, LungsliceError, render_error
from lungslice.serve.fetch import FETCHERS, make_fetcher
from lungslice.serve.orthanc import (
    OrthancClient,
    OrthancError,
    OrthancUnavailableError,
    Patience,
)
from lungslice.serve.results import is_result_series, model_id, read_results
from lungslice.serve.state import ServeState

if TYPE_CHECKING:
    from lungslice.prediction import Predictor

__all__ = ["ServeConfig", "Service", "StudyOutcome"]

log = logging.getLogger(__name__)


def _default_load() -> LoadConfig:
    # what `lungslice predict` refuses by default: implausible HU, < 30 mm of z
    return LoadConfig(hu_check="refuse", min_coverage_mm=30.0)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the service.

    Attributes
    ----------
    model : Path
        The model bundle folder.
    workers : int
        Studies processed at once (threads, each with its own predictor).
    store : {"stow", "rest"}
        How results are stored: DICOMweb STOW-RS or Orthanc's REST ``/instances``.
    fetch : {"rest", "dicomweb"}
        How studies are read: Orthanc's REST API or DICOMweb (QIDO-RS, WADO-RS).
    poll_interval_s : float
        Pause between two reads of an exhausted change feed.
    max_pause_s : float
        Longest pause of a worker whose study met an unreachable Orthanc.
    patience : Patience
        How long to wait for Orthanc at start-up and mid-run before giving up.
    batch : int
        Changes read per request.
    max_attempts : int
        Starts of one study before it is failed (a study whose processing
        kills the worker is not retried forever).
    top_k : int
        Key images per series.
    load : LoadConfig
        How the study's DICOM is loaded (as ``lungslice predict``).
    """

    model: Path
    workers: int = 1
    store: Literal["stow", "rest"] = "stow"
    fetch: Literal["rest", "dicomweb"] = "rest"
    poll_interval_s: float = 0.5
    max_pause_s: float = 30.0
    patience: Patience = field(default_factory=Patience)
    batch: int = 100
    max_attempts: int = 3
    top_k: int = 5
    load: LoadConfig = field(default_factory=_default_load)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers: expected >= 1, got {self.workers}")
        if self.store not in ("stow", "rest"):
            raise ConfigError(f"--store: expected 'stow' or 'rest', got {self.store!r}")
        if self.fetch not in FETCHERS:
            raise ConfigError(f"--fetch: expected 'rest' or 'dicomweb', got {self.fetch!r}")
        if not self.poll_interval_s > 0:
            raise ConfigError(f"poll_interval_s: expected > 0, got {self.poll_interval_s}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts: expected >= 1, got {self.max_attempts}")


@dataclass(frozen=True)
class StudyOutcome:
    """What happened to one study."""

    status: str
    reason: str | None = None
    study_uid: str | None = None
    outputs: tuple[str, ...] = ()
    seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Service:
    """lungslice next to one Orthanc.

    Parameters
    ----------
    client : OrthancClient
        The Orthanc to follow and store into.
    state : ServeState
        Cursor and study records.
    config : ServeConfig
        Model, workers and storage settings.
    predictor_factory : callable, optional
        Makes one predictor per worker (default: ``Predictor(config.model)``).
    """

    def __init__(
        self,
        client: OrthancClient,
        state: ServeState,
        config: ServeConfig,
        predictor_factory: Callable[[], Predictor] | None = None,
    ) -> None:
        self.client = client
        self.state = state
        self.config = config
        self.model_id = model_id(config.model)
        self.fetcher = make_fetcher(config.fetch, client)
        self._factory = predictor_factory or self._load_predictor
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._loaded = 0
        self._loaded_lock = threading.Lock()
        #: Set once every worker has its predictor loaded.
        self.ready = threading.Event()

    def _load_predictor(self) -> Predictor:
        from lungslice.prediction import Predictor

        return Predictor(self.config.model)

    def stop(self) -> None:
        """Ask the feed loop and the workers to stop after their current study."""
        self._stop.set()
        self._wake.set()

    # -- the feed -----------------------------------------------------------------------
    def poll(self) -> tuple[list[str], bool]:
        """Read the change feed once from the cursor; enqueue the stable studies.

        Returns
        -------
        (list of str, bool)
            Newly enqueued Orthanc study ids, and whether the feed is exhausted.
        """
        since = self.state.cursor(self.client.url)
        answer = self.client.changes(since, self.config.batch)
        stable = [
            (str(c["ID"]), int(c["Seq"]))
            for c in answer.get("Changes", [])
            if c.get("ChangeType") == "StableStudy"
        ]
        last = int(answer.get("Last", since))
        added = self.state.consume(self.client.url, max(last, since), stable)
        for orthanc_id in added:
            log.info("study %s: queued", orthanc_id)
        if added:
            self._wake.set()
        return added, bool(answer.get("Done", True))

    def run(self, until: Callable[[ServeState, bool], bool] | None = None) -> None:
        """Follow the feed and process studies until stopped (or ``until`` says so).

        Parameters
        ----------
        until : callable, optional
            Called after each poll with the state and whether the feed is
            exhausted; the service stops when it returns True and no study is
            being processed.
        """
        # waits within config.patience; 401 (wrong credentials) fails at once
        if self.client.wait_until_up(self.config.patience, sleep=self._stop.wait) is None:
            return  # stopped while waiting
        for orthanc_id in self.state.recover(self.config.max_attempts):
            log.warning("study %s: its last run was interrupted; queued again", orthanc_id)
        threads = [
            threading.Thread(target=self._work, name=f"lungslice-worker-{n}", daemon=True)
            for n in range(self.config.workers)
        ]
        for t in threads:
            t.start()
        try:
            while not self._stop.is_set():
                try:
                    _, done = self.poll()
                except OrthancUnavailableError as err:
                    log.warning("change feed: Orthanc went away (%s)", err.last or err)
                    # raises OrthancDownError when it stays away past config.patience
                    self.client.wait_until_up(
                        self.config.patience,
                        phase="mid-run",
                        first_failure=err.last or str(err),
                        sleep=self._stop.wait,
                    )
                    continue
                counts = self.state.counts()
                if until is not None and not (counts["pending"] or counts["running"]):
                    if until(self.state, done):
                        break
                if done:
                    self._stop.wait(self.config.poll_interval_s)
        finally:
            self.stop()
            for t in threads:
                t.join()

    def run_once(self) -> None:
        """Process every study that is stable now, then return."""
        self.run(until=lambda _state, done: done)

    # -- the workers --------------------------------------------------------------------
    def _work(self) -> None:
        t0 = time.perf_counter()
        try:
            predictor = self._factory()  # once per worker, reused for every study
        except Exception as err:  # cannot predict at all: stop the service
            log.error("worker: the model cannot be loaded: %s", render_error(err, "cli"))
            self.stop()
            raise
        _preload_writers()
        log.info(
            "%s: model %s and the DICOM writers loaded in %.1f s",
            threading.current_thread().name,
            self.model_id[:12],
            time.perf_counter() - t0,
        )
        with self._loaded_lock:
            self._loaded += 1
            if self._loaded == self.config.workers:
                self.ready.set()
        pause = 1.0
        while not self._stop.is_set():
            orthanc_id = self.state.claim()
            if orthanc_id is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outcome = self.process(orthanc_id, predictor)
            except OrthancUnavailableError as err:
                log.warning("study %s: Orthanc unavailable; queued again (%s)", orthanc_id, err)
                self.state.retry_later(orthanc_id, f"waiting for Orthanc: {err}")
                self._stop.wait(pause)
                pause = min(pause * 2.0, self.config.max_pause_s)
                continue
            except Exception as err:  # a bug or an unforeseen input: record it, go on
                log.debug("study %s", orthanc_id, exc_info=err)
                outcome = StudyOutcome("failed", f"internal error: {type(err).__name__}: {err}")
            pause = 1.0
            self.state.finish(
                orthanc_id,
                outcome.status,
                reason=outcome.reason,
                study_uid=outcome.study_uid,
                model_id=self.model_id,
                outputs=list(outcome.outputs),
                seconds=outcome.seconds,
                timings=outcome.timings,
            )
            (log.warning if outcome.status == "failed" else log.info)(
                "study %s (%s): %s%s",
                outcome.study_uid,
                orthanc_id,
                outcome.status,
                f" - {outcome.reason}" if outcome.reason else "",
            )

    def process(self, orthanc_id: str, predictor: Predictor) -> StudyOutcome:
        """Process one study; its outcome (the input's refusal is a ``failed`` outcome).

        The outcome's ``timings`` hold the seconds of each stage: ``list`` (the
        study's series), ``fetch`` (download), ``predict`` (with predict's own
        stages as ``predict.<stage>``), ``store`` and ``verify``.

        Raises
        ------
        OrthancUnavailableError
            When Orthanc cannot be reached (the study is to be retried later).
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            study = self.client.study(orthanc_id)
        except OrthancUnavailableError:
            raise
        except OrthancError as err:
            if err.status == 404:
                return StudyOutcome("skipped", "the study was deleted from Orthanc")
            return StudyOutcome("failed", str(err))
        study_uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
        try:
            with _stage(timings, "list"):
                series = self.fetcher.list_series(orthanc_id, study_uid)
        except OrthancUnavailableError:
            raise
        except OrthancError as err:
            return StudyOutcome("failed", str(err), study_uid)
        ours = [s for s in series if is_result_series(s.description, self.model_id)]
        attempts = next(
            (r.attempts for r in self.state.studies("running") if r.orthanc_id == orthanc_id), 1
        )
        if ours and attempts <= 1:
            return StudyOutcome(
                "skipped",
                f"already holds lungslice results of model {self.model_id[:12]} "
                f"({len(ours)} series)",
                study_uid,
                tuple(s.series_uid for s in ours),
            )
        ct = [s for s in series if s.modality == "CT" and not is_result_series(s.description)]
        if not ct:
            kinds = sorted({s.modality or "unknown" for s in series})
            return StudyOutcome(
                "skipped",
                f"no CT series (the study holds {', '.join(kinds) or 'nothing'})",
                study_uid,
            )
        tmp = Path(tempfile.mkdtemp(prefix=f"lungslice-serve-{orthanc_id[:8]}-"))
        try:
            with _stage(timings, "fetch"):
                for n, s in enumerate(ct):
                    self.fetcher.download(study_uid, s, tmp / "in" / f"series{n}")
            try:
                with _stage(timings, "predict"):
                    files = self._predict(predictor, tmp, timings)
                objects = read_results(files, tmp / "out", study_uid, self.model_id)
            except LungsliceError as err:
                reason = render_error(err, "cli").replace(str(tmp), "<study>")
                return StudyOutcome("failed", reason, study_uid, timings=timings)
            if not objects:
                return StudyOutcome(
                    "processed",
                    "no DICOM result to store (no recommendation)",
                    study_uid,
                    timings=timings,
                )
            with _stage(timings, "store"):
                self._store(objects, study_uid)
            with _stage(timings, "verify"):
                stored = {s.series_uid for s in self.fetcher.list_series(orthanc_id, study_uid)}
            missing = sorted({o.series_uid for o in objects} - stored)
            if missing:
                return StudyOutcome(
                    "failed",
                    f"stored results did not appear in the study (series {', '.join(missing)})",
                    study_uid,
                    timings=timings,
                )
            return StudyOutcome(
                "processed",
                None,
                study_uid,
                tuple(f"{o.kind}: {o.series_uid}" for o in objects),
                round(time.perf_counter() - t0, 3),
                timings,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _predict(self, predictor: Predictor, tmp: Path, timings: dict[str, float]) -> list[Path]:
        from lungslice.prediction import PredictConfig

        config = PredictConfig(
            top_k=self.config.top_k, write_report=False, heatmaps=False, load=self.config.load
        )
        for series in predictor.predict_study(tmp / "in", tmp / "out", config):
            for stage, seconds in series.prediction.timings.items():
                key = f"predict.{stage}"
                timings[key] = round(timings.get(key, 0.0) + float(seconds), 3)
        return sorted((tmp / "out").rglob("*.dcm"))

    def _store(self, objects: list[Any], study_uid: str) -> None:
        if self.config.store == "stow":
            self.client.store_stow([o.data for o in objects], study_uid)
            return
        for o in objects:
            self.client.store_rest(o.data)


def _preload_writers() -> None:
    """Import predict's DICOM writers (highdicom, PIL) now rather than in the first study.

    About 2 s here, once per process; without it the first study's latency
    carries it.
    """
    for name in ("lungslice.report.kos", "lungslice.report.sr", "lungslice.report.summary"):
        importlib.import_module(name)


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds of the ``with`` block to ``timings[name]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t, 3)
