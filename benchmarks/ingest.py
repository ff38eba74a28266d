"""Ingest speed: lungslice.load_series vs a naive pydicom loop vs SimpleITK, side by side.

Run from the repository root::

    .venv/bin/python benchmarks/ingest.py                  # default allocator
    .venv/bin/python benchmarks/ingest.py --tuned-malloc   # glibc settings of docs/performance.md

It unpacks ``../shared/realct`` (three real uncompressed GE chest CT series)
into a temporary folder, or reads ``--data DIR`` (folders of one series each),
and measures the methods interleaved, ``--repeats`` times each, printing the
median slices/s and the ratios. The machines here are shared and noisy:
compare ratios from one run, not numbers across runs.

Single series: every method reads every file, sorts slices by position and
returns one array (lungslice: float32 HU with padding set to air; naive:
``pixel_array`` * slope + intercept; SimpleITK: its rescaled output array).

Many series: all series of the folder, each loaded and then resampled to
1 mm, one after another, vs :func:`lungslice.dicom.batch.iter_sources` loading
the next series in a background thread while the caller resamples. Index:
``index_tree`` with 1 process and all cores (processes) vs a
``dcmread(stop_before_pixels=True)`` loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from lungslice.dicom.batch import iter_sources
from lungslice.dicom.resample import resample
from lungslice.dicom.volume import CTVolume, load_series

REPO = Path(__file__).resolve().parents[1]
REALCT = REPO / ".." / "shared" / "realct"
TUNED = {
    "MALLOC_MMAP_THRESHOLD_": "1000000000",
    "MALLOC_TRIM_THRESHOLD_": "1000000000",
    "MALLOC_TOP_PAD_": "100000000",
}


def naive(folder: Path) -> np.ndarray:
    """The usual tutorial loop: dcmread each file, pixel_array, rescale, sort by z, stack."""
    slices = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        slices.append((float(ds.ImagePositionPatient[2]), hu))
    slices.sort(key=lambda s: s[0])
    return np.stack([s[1] for s in slices])


def simpleitk(folder: Path) -> np.ndarray:
    """SimpleITK's ImageSeriesReader with GDCM's own file ordering."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def ours(folder: Path) -> np.ndarray:
    return load_series(folder).hu


def time_it(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def series_folders(args: argparse.Namespace, tmp: Path) -> list[Path]:
    if args.data is not None:
        return sorted(p for p in Path(args.data).iterdir() if p.is_dir())
    if not REALCT.is_dir():
        sys.exit(f"{REALCT} is absent: pass --data DIR (a folder of series folders)")
    for archive in sorted(REALCT.glob("*.tar.xz")):
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    return sorted(p for p in tmp.iterdir() if p.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of series folders")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--tuned-malloc", action="store_true", help="re-run with the tuned glibc env"
    )
    parser.add_argument("--many", type=int, default=4, help="times each series is loaded")
    parser.add_argument(
        "--index-series",
        type=int,
        default=40,
        help="synthetic series (128 slices of 64x64) for the index benchmark; 0 to skip",
    )
    args = parser.parse_args()
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in TUNED.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED})
    tuned = all(os.environ.get(k) == v for k, v in TUNED.items())

    with tempfile.TemporaryDirectory() as tmp_name:
        folders = series_folders(args, Path(tmp_name))
        n_slices = {f: len(list(f.iterdir())) for f in folders}
        methods: dict[str, Callable[[Path], object]] = {
            "lungslice": ours,
            "naive pydicom": naive,
            "SimpleITK": simpleitk,
        }
        # Warm the page cache and imports once.
        for f in folders:
            for fn in methods.values():
                fn(f)
        rates: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for name, method in methods.items():
                seconds = 0.0
                for folder in folders:
                    start = time.perf_counter()
                    method(folder)
                    seconds += time.perf_counter() - start
                rates[name].append(sum(n_slices.values()) / seconds)

        # "Many series": every folder --many times over, as a long run would see;
        # the caller resamples each volume to 1 mm (NumPy, GIL released) meanwhile.
        jobs = [f for f in folders for _ in range(args.many)]

        def many_serial() -> None:
            for f in jobs:
                resample(load_series(f))

        def many_prefetch() -> None:
            for vol in iter_sources([(f, None) for f in jobs], prefetch=1):
                assert isinstance(vol, CTVolume), vol
                resample(vol)

        many = {
            "load then resample, serial": many_serial,
            "iter_sources prefetch=1 + resample": many_prefetch,
        }
        many_rates: dict[str, list[float]] = {m: [] for m in many}
        total = sum(n_slices[f] for f in jobs)
        for _ in range(args.repeats):
            for label, run in many.items():
                many_rates[label].append(total / time_it(run))

    index_med = index_benchmark(args.index_series, args.repeats) if args.index_series else {}
    med = {k: statistics.median(v) for k, v in rates.items()}
    many_med = {k: statistics.median(v) for k, v in many_rates.items()}
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load} - other work shares these cores")
    print(
        f"cores: {os.cpu_count()}  allocator: {'tuned' if tuned else 'glibc default'}"
        f"  series: {len(folders)} ({sum(n_slices.values())} slices, uncompressed)"
        f"  repeats: {args.repeats}"
    )
    print("single series, slices/s (median):")
    for name, rate in med.items():
        print(f"  {name:36s} {rate:8.0f}")
    print(f"  ratio lungslice / SimpleITK      {med['lungslice'] / med['SimpleITK']:.2f}")
    print(f"  ratio lungslice / naive pydicom  {med['lungslice'] / med['naive pydicom']:.2f}")
    print(
        f"{len(folders)} series x {args.many} loads ({total} slices), load + resample to 1 mm, "
        "source slices/s (median):"
    )
    for name, rate in many_med.items():
        print(f"  {name:36s} {rate:8.0f}")
    pre, ser = (
        many_med["iter_sources prefetch=1 + resample"],
        many_med["load then resample, serial"],
    )
    print(f"  ratio prefetch / serial          {pre / ser:.2f}")
    if index_med:
        print(f"index of {args.index_series} synthetic series x 128 files, files/s (median):")
        for name, rate in index_med.items():
            print(f"  {name:36s} {rate:8.0f}")
        one, two = index_med["index_tree workers=1"], index_med["index_tree all cores"]
        print(f"  ratio all cores / 1 worker       {two / one:.2f}")
        print(f"  ratio 1 worker / pydicom loop    {one / index_med['pydicom headers loop']:.2f}")


def index_benchmark(n_series: int, repeats: int) -> dict[str, float]:
    """index_tree with 1 worker and all cores vs a dcmread(stop_before_pixels) loop."""
    from lungslice.dicom import discover
    from lungslice.testing import body_phantom, write_ct_series

    hu = body_phantom(128, 64, 64, noise=0.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        root = Path(tmp_name)
        for i in range(n_series):
            write_ct_series(root / f"P{i:03d}" / "s", hu, seed=i, patient_id=f"P{i:03d}")
        files = discover.walk_files(root)

        def loop() -> None:
            for path in files:
                pydicom.dcmread(path, stop_before_pixels=True)

        runs: dict[str, Callable[[], object]] = {
            "index_tree workers=1": lambda: discover.index_tree(root, workers=1),
            "index_tree all cores": lambda: discover.index_tree(root, workers=None),
            "pydicom headers loop": loop,
        }
        rates: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                rates[name].append(len(files) / time_it(run))
    return {k: statistics.median(v) for k, v in rates.items()}


if __name__ == "__main__":
    main()
