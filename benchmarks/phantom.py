"""Phantom speed and calibration, measured side by side in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/phantom.py                 # speed + calibration
    .venv/bin/python benchmarks/phantom.py --skip-speed    # calibration table only
    .venv/bin/python benchmarks/phantom.py --previews docs/images
    .venv/bin/python benchmarks/phantom.py --all-nodules --skip-speed --skip-calibration

Speed: one full 512 x 512 LIDC scan of ~300 slices rendered (and written), and
the demo-sized phantom (24 stratified patients, nodule-bearing z range with a
10 mm margin) synthesised to a temporary folder. Calibration: the same
figures (lungslice.phantom.calibrate.figures) for each real series in
../shared/realct and for phantom scans rendered with the matching kernel.
Nothing here is asserted; the numbers go to docs/phantom.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import tarfile
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

from lungslice.lidc.db import read_database
from lungslice.phantom import PhantomConfig, render, select_patients, synthesize
from lungslice.phantom.calibrate import HIST_EDGES, Figures, figures, read_folder_hu
from lungslice.phantom.preview import phantom_preview, series_preview

REPO = Path(__file__).resolve().parents[1]
REALCT = REPO / ".." / "shared" / "realct"
# real series -> the phantom kernel that matches its ConvolutionKernel
REAL_KERNELS = {
    "chest-ct-gemed-lung-2p5mm": "lung",
    "chest-ct-ge-pe-0p8mm": "standard",
    "chest-ct-ge-petct-4mm": "soft",
}
CALIBRATION_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0078", "LIDC-IDRI-0010")


def _speed() -> None:
    scans = read_database()
    full = min(scans, key=lambda s: (abs(s.n_slices - 300), s.patient_id))
    config = PhantomConfig(seed=0, kernel="standard")
    render(full, PhantomConfig(seed=0, kernel="standard", z_margin_mm=0.0))  # warm imports
    t0, c0 = time.perf_counter(), time.process_time()
    r = render(full, config)
    t_render, c_render = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        synthesize(tmp, [full.patient_id], config, scans=[full])
        t_write, c_write = time.perf_counter() - t0, time.process_time() - c0
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"full scan {full.patient_id}: {r.hu.shape[0]} slices x 512 x 512")
    print(f"  render only     {t_render:6.1f} s wall, {c_render:6.1f} s CPU")
    print(f"  render + write  {t_write:6.1f} s wall, {c_write:6.1f} s CPU")

    ids = select_patients(scans, 24, seed=0)
    chosen = [s for s in scans if s.patient_id in set(ids)]
    for matrix in (512, 256):
        cfg = PhantomConfig(seed=0, matrix=matrix, z_margin_mm=10.0)
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            written = synthesize(tmp, ids, cfg, scans=chosen)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = sum(s.n_slices for s in written)
        print(
            f"demo: 24 patients, z margin 10 mm, matrix {matrix}: {len(written)} series, "
            f"{n} slices in {dt:.1f} s wall, {cpu:.1f} s CPU"
        )


def _all_nodules() -> None:
    """Every LIDC nodule: drawn on exactly its readers' slices? How many needed a pocket?"""
    from lungslice.lidc.nodules import find_nodules
    from lungslice.phantom.anatomy import chest_shape, scan_key
    from lungslice.phantom.nodules import nodule_patches, nodule_spheres

    n_nodules = n_pockets = n_mismatch = 0
    t0 = time.perf_counter()
    for scan in read_database():
        nodules = find_nodules(scan)
        patches = nodule_patches(scan, nodules, matrix=256, seed=0)
        drawn = {(p.nodule_id, p.slice_index) for p in patches if p.alpha.max() > 0}
        wanted = {(n.nodule_id, k) for n in nodules for k in n.slice_indices}
        n_mismatch += drawn != wanted
        # the same draw render() makes for this scan's chest
        shape = chest_shape(
            (float(scan.slice_zvals.min()), float(scan.slice_zvals.max())),
            np.random.default_rng([0, scan_key(scan.series_uid), 1]),
            nodule_spheres(scan, nodules),
            fov_half=256 * scan.pixel_spacing,
        )
        n_nodules += len(nodules)
        n_pockets += len(shape.pockets)
    print(
        f"all scans: {n_nodules} nodules, {n_pockets} needed a lung pocket "
        f"({100 * n_pockets / max(n_nodules, 1):.1f} %), {n_mismatch} scans whose nodule "
        f"pixels are not on exactly the readers' slices ({time.perf_counter() - t0:.0f} s)"
    )


def _unpack(tmp: Path) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for name in REAL_KERNELS:
        archive = REALCT / f"{name}.tar.xz"
        if not archive.is_file():
            print(f"(missing {archive}; skipped)")
            continue
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / name, filter="data")
        (folders[name],) = [p for p in (tmp / name).iterdir() if p.is_dir()]
    return folders


def _row(label: str, f: Figures) -> str:
    p = f.lung_percentiles
    pct = " / ".join(f"{p[k]:.0f}" for k in ("p5", "p25", "p50", "p75", "p95")) if p else "-"
    return (
        f"| {label} | {f.lung_slices} | {pct} | {100 * f.lung_above_minus500:.1f} % | "
        f"{f.noise_air:.1f} | {f.noise_soft_tissue:.1f} |"
    )


def _hist_row(label: str, f: Figures) -> str:
    return f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in f.lung_histogram) + " |"


def _calibration(previews: Path | None) -> None:
    scans = {s.patient_id: s for s in read_database(patient_ids=list(CALIBRATION_PATIENTS))}
    rows: list[tuple[str, Figures]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folders = _unpack(tmp)
        for name, folder in folders.items():
            hu, _ = read_folder_hu(folder)
            rows.append((f"real {name} ({REAL_KERNELS[name].upper()})", figures(hu)))
            kernel = REAL_KERNELS[name]
            vols = [
                render(scans[p], PhantomConfig(seed=0, kernel=kernel)).hu
                for p in CALIBRATION_PATIENTS
            ]
            rows.append(
                (f"phantom, kernel {kernel} ({len(vols)} scans)", figures(np.concatenate(vols)))
            )
        if previews is not None:
            previews.mkdir(parents=True, exist_ok=True)
            if "chest-ct-gemed-lung-2p5mm" in folders:
                series_preview(
                    folders["chest-ct-gemed-lung-2p5mm"],
                    previews / "realct_preview.png",
                    title="real chest CT (GE, LUNG kernel, 2.5 mm; lung window)",
                )
            out = tmp / "phantom"
            ids = ["LIDC-IDRI-0001", "LIDC-IDRI-0078"]
            cfg = PhantomConfig(seed=0, z_margin_mm=5.0)
            written = synthesize(out, ids, cfg, scans=[scans[p] for p in ids])
            phantom_preview(written, [scans[p] for p in ids], previews / "phantom_preview.png")
    print()
    print(
        "| series | lung slices | lung-field HU p5 / p25 / p50 / p75 / p95 | "
        "lung voxels > -500 HU | noise air (HU) | noise soft tissue (HU) |"
    )
    print("|---|---|---|---|---|---|")
    for label, f in rows:
        print(_row(label, f))
    print()
    edges = [f"{int(a)}..{int(b)}" for a, b in pairwise(HIST_EDGES)]
    print("Lung-field HU histogram (% of lung-field voxels per bin):")
    print("| series | " + " | ".join(edges) + " |")
    print("|---|" + "---|" * len(edges))
    for label, f in rows:
        print(_hist_row(label, f))


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-speed", action="store_true", help="calibration only")
    parser.add_argument("--skip-calibration", action="store_true", help="speed only")
    parser.add_argument("--previews", type=Path, help="write the two preview PNGs here")
    parser.add_argument(
        "--all-nodules", action="store_true", help="check every LIDC nodule (about a minute)"
    )
    args = parser.parse_args()
    if args.all_nodules:
        _all_nodules()
    if not args.skip_speed:
        _speed()
    if not args.skip_calibration:
        _calibration(args.previews)


if __name__ == "__main__":
    main()
