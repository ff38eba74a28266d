"""Phantom speed and calibration, measured side by side in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/phantom.py                 # speed + calibration
    .venv/bin/python benchmarks/phantom.py --skip-speed    # calibration table only
    .venv/bin/python benchmarks/phantom.py --previews docs/images
    .venv/bin/python benchmarks/phantom.py --skip-calibration --demo-patients 6
    # the same with the code of an older commit (side by side, same load):
    git archive f5ebfb7 src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src \
        .venv/bin/python benchmarks/phantom.py --skip-calibration --demo-patients 6
    .venv/bin/python benchmarks/phantom.py --all-nodules --skip-speed --skip-calibration
    .venv/bin/python benchmarks/phantom.py --nodule-hu 12 --skip-speed --skip-calibration \
        --previews docs/images
    # the chest wall (pleural plaques, ribs, scapulae) of one patient, before and after:
    git archive 9b8de5c src | tar -x -C /tmp/old-wall && .venv/bin/python benchmarks/phantom.py \
        --skip-speed --skip-calibration --chest-wall docs/images/phantom_chest_wall.png \
        --old-src /tmp/old-wall/src

Speed: one full 512 x 512 LIDC scan of ~300 slices rendered (and written), and
the demo-sized phantom (24 stratified patients, nodule-bearing z range with a
10 mm margin) synthesised to a temporary folder. Calibration: the same
figures (lungslice.phantom.calibrate.figures) for each real series in
../shared/realct and for phantom scans rendered with the matching kernel.
Nodule HU: nodules of every texture rating rendered at 512 x 512 (each scan's
own kernel, seed 0), written as DICOM and read back, their core HU tabulated
against the published ranges (lungslice.phantom.nodules.nodule_core_hu).
Nothing here is asserted; the numbers go to docs/phantom.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

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


def _speed(demo_patients: int = 24) -> None:
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

    # the demo cohort, or its first demo_patients (a quicker side-by-side with old code)
    ids = select_patients(scans, 24, seed=0)[:demo_patients]
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


#: Texture bins and the published density of each (HU): pure ground glass -750..-300;
#: part-solid: a solid component of ~0..+50 inside ground glass; solid 0..+50.
TEXTURE_BINS = (
    ("1-1.5 (ground glass)", 1.0, 1.5, (-750.0, -300.0), None),
    ("1.5-2.5 (part-solid)", 1.5, 2.5, (-750.0, 50.0), (0.0, 50.0)),
    ("2.5-3.5 (part-solid)", 2.5, 3.5, (-750.0, 50.0), (0.0, 50.0)),
    ("3.5-4.5 (part-solid)", 3.5, 4.5, (-750.0, 50.0), (0.0, 50.0)),
    ("4.5-5 (solid)", 4.5, 5.01, (0.0, 50.0), (0.0, 50.0)),
)
#: A nodule whose core reads at least this without the nodule sits in soft tissue.
IN_LUNG_HU = -500.0
#: Always measured: the nodule the reviewer found too faint.
NODULE_HU_ALWAYS = ("LIDC-IDRI-0684",)


def _calcified(nodule: Any) -> bool:
    """Whether the phantom paints calcium into the nodule (as nodules._style decides)."""
    return bool(nodule.mean_ratings["calcification"] <= 5.5)


def _texture_bin(texture: float) -> int:
    for i, (_, lo, hi, _, _) in enumerate(TEXTURE_BINS):
        if lo <= texture < hi or (i == 0 and texture <= hi):
            return i
    return len(TEXTURE_BINS) - 1


def _nodule_hu(per_bin: int, previews: Path | None) -> None:
    """Render nodules of every texture bin, measure their core HU on the written DICOM."""
    from lungslice.lidc.nodules import find_nodules
    from lungslice.phantom.nodules import central_slice, nodule_core_hu, nodule_masks
    from lungslice.phantom.preview import Panel, draw_grid
    from lungslice.phantom.render import render
    from lungslice.phantom.writer import write_series

    t0 = time.perf_counter()
    scans = read_database()
    # per_bin patients per texture bin, drawn with a fixed seed among the scans
    # holding a nodule of that bin, plus the reviewer's example
    by_bin: dict[int, list[str]] = {i: [] for i in range(len(TEXTURE_BINS))}
    nodules_of = {}
    for scan in scans:
        nodules_of[scan.series_uid] = find_nodules(scan)
        for b in {_texture_bin(n.mean_ratings["texture"]) for n in nodules_of[scan.series_uid]}:
            by_bin[b].append(scan.series_uid)
    rng = np.random.default_rng(0)
    chosen = set(s.series_uid for s in scans if s.patient_id in NODULE_HU_ALWAYS)
    for b in sorted(by_bin):
        pool = sorted(set(by_bin[b]) - chosen)
        take = rng.choice(len(pool), size=min(per_bin, len(pool)), replace=False)
        chosen |= {pool[int(i)] for i in take}
    picked = sorted((s for s in scans if s.series_uid in chosen), key=lambda s: s.patient_id)
    rows = []
    crops: list[tuple[float, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for scan in picked:
            nodules = nodules_of[scan.series_uid]
            centre = {n.nodule_id: central_slice(scan, n) for n in nodules}
            config = PhantomConfig(seed=0, matrix=512)
            wanted = np.array(sorted(set(centre.values())))
            r = render(scan, config, wanted)
            # the same slices without nodules: what surrounds each nodule (lung or wall)
            bare = render(scan, replace(config, nodules=False), wanted)
            series = write_series(scan, r, tmp, config)
            hu, zs = read_folder_hu(series.folder)
            for n in nodules:
                k = centre[n.nodule_id]
                i = int(np.flatnonzero(np.isclose(zs, scan.slice_zvals[k]))[0])
                m = nodule_core_hu(scan, n, hu[i], k)
                j = int(np.flatnonzero(bare.slice_indices == k)[0])
                around = nodule_core_hu(scan, n, bare.hu[j].astype(np.float64), k).core_hu
                rows.append((scan, n, m, r.kernel.name, around))
                box, _ = nodule_masks(scan, n)
                r0, c0, h, w = box
                rc, cc = r0 + h // 2, c0 + w // 2
                half = max(16, max(h, w) // 2 - 6)
                a, b_ = max(rc - half, 0), max(cc - half, 0)
                crops.append(
                    (
                        m.texture,
                        Panel(
                            hu=hu[i, a : a + 2 * half, b_ : b_ + 2 * half],
                            title=(
                                f"{n.nodule_id} tex {m.texture:.1f}\n"
                                f"{m.diameter_mm:.0f} mm, core {m.core_hu:.0f} HU, "
                                f"{r.kernel.name}"
                            ),
                        ),
                    )
                )
            shutil.rmtree(series.folder)
    dt = time.perf_counter() - t0

    print()
    print(
        f"nodule HU: {len(rows)} nodules of {len(picked)} scans (up to {per_bin} scans per "
        f"texture bin, seed 0, matrix 512, each scan's own kernel), measured on the written "
        f"DICOM in {dt:.0f} s"
    )
    print()
    # the published ranges are for nodules in lung; a nodule the readers drew in the
    # chest wall or mediastinum (its pixels there are the wall's, drawn or not) and
    # calcified ones are left out of the bins
    plain = [(n, m) for _, n, m, _, bg in rows if not _calcified(n) and bg < IN_LUNG_HU]
    print(
        f"{len(plain)} nodules in lung and not calcified; left out: "
        f"{sum(_calcified(n) for _, n, _, _, _ in rows)} calcified, "
        f"{sum(bg >= IN_LUNG_HU and not _calcified(n) for _, n, _, _, bg in rows)} whose "
        f"core lies in soft tissue (>= {IN_LUNG_HU:.0f} HU without the nodule)"
    )
    print()
    print(
        "| texture bin | nodules | core HU median [p10, p90] | published | core inside "
        "published | centre HU median [p10, p90] | published solid part | nodules >= 8 mm: "
        "core median, inside published (n) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for b, (label, _, _, band, solid) in enumerate(TEXTURE_BINS):
        sel = [m for _, m in plain if _texture_bin(m.texture) == b]
        if not sel:
            print(f"| {label} | 0 | - | - | - | - | - | - |")
            continue
        core = np.array([m.core_hu for m in sel])
        cen = np.array([m.centre_hu for m in sel])
        big = np.array([m.core_hu for m in sel if m.diameter_mm >= 8.0])
        inside = np.mean((core >= band[0]) & (core <= band[1]))
        q = np.percentile(core, [50, 10, 90])
        qc = np.percentile(cen, [50, 10, 90])
        solid_text = f"{solid[0]:+.0f}..{solid[1]:+.0f}" if solid else "-"
        big_text = (
            f"{np.median(big):.0f}, {100 * np.mean((big >= band[0]) & (big <= band[1])):.0f} % "
            f"({big.size})"
            if big.size
            else "- (0)"
        )
        print(
            f"| {label} | {len(sel)} | {q[0]:.0f} [{q[1]:.0f}, {q[2]:.0f}] | "
            f"{band[0]:+.0f}..{band[1]:+.0f} | {100 * inside:.0f} % | "
            f"{qc[0]:.0f} [{qc[1]:.0f}, {qc[2]:.0f}] | {solid_text} | {big_text} |"
        )
    calc = np.array([m.centre_hu for _, n, m, _, _ in rows if _calcified(n)])
    if calc.size:
        q = np.percentile(calc, [50, 10, 90])
        print(
            f"| calcified (any texture; drawn 200-1000 HU) | {calc.size} | - | - | - | "
            f"{q[0]:.0f} [{q[1]:.0f}, {q[2]:.0f}] | - | - |"
        )
    print()
    print(
        "| patient | nodule | texture | calcified | diameter (mm) | kernel | "
        "slice thickness (mm) | core HU | centre HU | core HU without the nodule |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scan, n, m, kernel, bg in rows:
        print(
            f"| {scan.patient_id} | {n.nodule_id.split('/')[-1]} | {m.texture:.2f} | "
            f"{'yes' if _calcified(n) else 'no'} | {m.diameter_mm:.1f} | {kernel} | "
            f"{scan.slice_thickness:g} | {m.core_hu:.0f} | {m.centre_hu:.0f} | {bg:.0f} |"
        )
    if previews is not None:
        _nodule_hu_figure(
            [(m, k) for _, n, m, k, bg in rows if not _calcified(n) and bg < IN_LUNG_HU],
            previews / "nodule_hu.png",
        )
        crops.sort(key=lambda t: t[0])
        pick = np.linspace(0, len(crops) - 1, min(12, len(crops))).round().astype(int)
        draw_grid(
            [crops[int(i)][1] for i in pick],
            previews / "nodule_hu_crops.png",
            title="phantom nodules by texture (lung window W 1500 / L -600, central slice)",
        )


def _nodule_hu_figure(rows: list[tuple[Any, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    rng = np.random.default_rng(0)
    colours = {"SOFT": "#0a84ff", "STANDARD": "#34c759", "LUNG": "#ff3b30"}
    for ax, what in zip(axes, ("core_hu", "centre_hu"), strict=True):
        ax.add_patch(
            plt.Rectangle(
                (0.8, -750),
                0.95,
                450,
                color="#ffcc00",
                alpha=0.35,
                lw=0,
                label="published ground glass -750..-300",
            )
        )
        ax.add_patch(
            plt.Rectangle(
                (1.75, 0),
                3.45,
                50,
                color="#bf5af2",
                alpha=0.35,
                lw=0,
                label="published solid (part) 0..+50",
            )
        )
        for kernel, colour in colours.items():
            sel = [m for m, k in rows if k == kernel]
            if not sel:
                continue
            x = np.array([m.texture for m in sel]) + rng.uniform(-0.06, 0.06, len(sel))
            y = np.array([getattr(m, what) for m in sel])
            size = np.clip(np.array([m.diameter_mm for m in sel]), 3, 30) * 2.5
            ax.scatter(
                x,
                y,
                s=size,
                c=colour,
                alpha=0.7,
                edgecolors="none",
                label=f"phantom, {kernel} kernel",
            )
        ax.set_xlabel("mean texture rating (1 ground glass ... 5 solid)")
        ax.set_xlim(0.8, 5.2)
        ax.set_ylim(-950, 250)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("HU")
    axes[0].set_title("core HU: median of the inner 50 % of the consensus mask", fontsize=9)
    axes[1].set_title("centre HU: median of the deepest 10 % (solid part)", fontsize=9)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "phantom nodule density by texture vs published ranges (marker size ~ diameter)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
            phantom_preview(written, [scans[p] for p in ids], previews / "phantom_nodules.png")
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


WALL_PATIENT = "LIDC-IDRI-0001"


def _wall_render(out: Path) -> None:
    """Render WALL_PATIENT (seed 0, 512 x 512, every slice) with whatever ``lungslice`` is
    importable, and save the volume and its plaques (``(angle, z, size)``) to ``out``."""
    scan = next(s for s in read_database() if s.patient_id == WALL_PATIENT)
    r = render(scan, PhantomConfig(seed=0, matrix=512))
    assert r.shape is not None
    plaques = []
    for p in r.shape.plaques:
        # (angle, z, half_angle, half_z, thickness, hu) tuples before, Plaque records now
        f = (p.angle, p.z, p.half_angle, p.half_z, p.thickness) if hasattr(p, "angle") else p[:5]
        plaques.append([float(f[0]), float(f[1]), float(f[2] * f[3] * f[4])])
    np.savez_compressed(out, hu=r.hu, z=r.z_positions, ps=r.pixel_spacing)
    out.with_suffix(".json").write_text(json.dumps(plaques))


def _chest_wall_figure(path: Path, old_src: Path | None) -> None:
    """Before/after picture of the chest wall: a coronal reformat through the largest
    plaque, the axial slice, and axial and coronal close-ups of the plaque."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lungslice.lidc.nodules import find_nodules
    from lungslice.phantom.anatomy import Grid, chest_shape, lung_mask, scan_key, slice_planes
    from lungslice.phantom.nodules import LIDC_MATRIX, nodule_spheres

    tmp = Path(tempfile.mkdtemp(prefix="chest-wall-"))
    versions: list[tuple[str, Path]] = []
    if old_src is not None:
        env = dict(os.environ, PYTHONPATH=str(old_src))
        code = f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import phantom; "
        code += f"phantom._wall_render(__import__('pathlib').Path({str(tmp / 'old.npz')!r}))"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        versions.append(("before", tmp / "old.npz"))
    _wall_render(tmp / "new.npz")
    versions.append(("after", tmp / "new.npz"))
    scan = next(s for s in read_database() if s.patient_id == WALL_PATIENT)
    z_all = np.asarray(scan.slice_zvals)
    shape = chest_shape(
        (float(z_all.min()), float(z_all.max())),
        np.random.default_rng([0, scan_key(scan.series_uid), 1]),
        nodule_spheres(scan, find_nodules(scan)),
        fov_half=LIDC_MATRIX / 2.0 * scan.pixel_spacing,
    )
    fig, axes = plt.subplots(len(versions), 4, figsize=(16, 4.4 * len(versions)), squeeze=False)
    for row, (label, npz) in zip(axes, versions, strict=True):
        d = np.load(npz)
        hu, zs, ps = d["hu"].astype(np.float32), d["z"], float(d["ps"])
        angle, pz, _ = max(json.loads(npz.with_suffix(".json").read_text()), key=lambda p: p[2])
        grid = Grid(hu.shape[1], ps)
        planes = slice_planes(shape, grid)
        k = int(np.abs(zs - pz).argmin())
        gx, gy = grid.coords()
        lung = lung_mask(shape, gx, gy, zs[k], planes)
        da = np.abs(np.remainder(planes["angle"] - angle + np.pi, 2 * np.pi) - np.pi)
        dist = np.where(lung & (da < 0.02), planes["depth"] - planes["wall"], np.inf)
        r, c = np.unravel_index(int(np.argmin(dist)), dist.shape)
        dz = float(np.median(np.diff(zs)))
        h, hz = int(30 / ps), int(30 / dz)
        r0, c0 = max(r - h, 0), max(c - h, 0)
        k0 = max(k - hz, 0)
        views = (
            (hu[::-1, r, :], -1100, 300, dz / ps, f"{label}: coronal through the plaque"),
            (hu[k], -1100, 300, 1.0, f"{label}: axial z = {zs[k]:.0f} mm"),
            (hu[k, r0 : r + h, c0 : c + h], -160, 240, 1.0, "axial close-up, W400/L40"),
            (hu[k0 : k + hz, r, c0 : c + h][::-1], -160, 240, dz / ps, "coronal close-up"),
        )
        for ax, (img, lo, hi, aspect, title) in zip(row, views, strict=True):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{WALL_PATIENT}, seed 0, 512 x 512: pleural plaque, ribs, scapulae", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {path}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-speed", action="store_true", help="calibration only")
    parser.add_argument("--skip-calibration", action="store_true", help="speed only")
    parser.add_argument("--previews", type=Path, help="write the two preview PNGs here")
    parser.add_argument(
        "--all-nodules", action="store_true", help="check every LIDC nodule (about a minute)"
    )
    parser.add_argument(
        "--nodule-hu",
        type=int,
        metavar="N",
        help="measure nodule core HU on N scans per texture bin (about 2 s a scan)",
    )
    parser.add_argument(
        "--demo-patients",
        type=int,
        default=24,
        help="time only the first N of the 24 demo-cohort patients",
    )
    parser.add_argument("--chest-wall", type=Path, help="write the chest-wall picture here")
    parser.add_argument(
        "--old-src", type=Path, help="with --chest-wall: an older commit's src for 'before'"
    )
    args = parser.parse_args()
    if args.chest_wall:
        _chest_wall_figure(args.chest_wall, args.old_src)
    if args.all_nodules:
        _all_nodules()
    if args.nodule_hu:
        _nodule_hu(args.nodule_hu, args.previews)
    if not args.skip_speed:
        _speed(args.demo_patients)
    if not args.skip_calibration:
        _calibration(args.previews)


if __name__ == "__main__":
    main()
