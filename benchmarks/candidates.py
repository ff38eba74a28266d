"""Lung field and nodule-candidate detector on the LIDC phantom and the real GE series.

Usage (from the repository root)::

    .venv/bin/python benchmarks/candidates.py                      # 20 patients
    .venv/bin/python benchmarks/candidates.py --patients 8 --keep /tmp/ph
    .venv/bin/python benchmarks/candidates.py --phantom /tmp/ph    # reuse a render
    .venv/bin/python benchmarks/candidates.py --patients 0 --realct --png docs/images

Phantom: ``select_patients(scans, N, seed)`` (stratified), every scan of each
rendered at 512 x 512 with every slice (``PhantomConfig(matrix=512,
z_margin_mm=None)``), loaded with ``load_series`` and resampled to 1 mm slices,
then ``lung_field`` and ``detect_candidates``. Counted nodules (``label_scans``
with the default ``LabelRule``) are the truth; a nodule's centre is the mean of
its readers' contour points (``lungslice.phantom.nodules.nodule_spheres``). A
nodule is found by a candidate whose centre lies within ``max(diameter / 2,
2 mm) + 1.5 mm`` of the nodule's centre. Printed: sensitivity at the top k
candidates per scan, candidates per scan, median times, peak RSS.

Real CT (``--realct``): the three series in ../shared/realct (no labels):
candidates per scan and times; ``--png DIR`` saves slices with the lung field
outline and the top candidates circled. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungslice.candidates import DetectorConfig, detect_candidates, lung_field, lung_slices
from lungslice.dicom.resample import ResampledVolume, resample
from lungslice.dicom.volume import load_series
from lungslice.lidc.db import LidcScan, read_database
from lungslice.lidc.labels import LabelRule, label_scans
from lungslice.lidc.nodules import cluster_and_find_nodules
from lungslice.phantom import PhantomConfig, select_patients, synthesize
from lungslice.phantom.nodules import nodule_spheres

REPO = Path(__file__).resolve().parents[1]
REALCT = REPO / ".." / "shared" / "realct"
TOP_K = (10, 25, 50, 100, 200, 300, 400, 500)
#: The detector before the lung-shell test and the larger Hessian budget (commits 4f58bc2, d12dd78).
PREVIOUS = {"min_lung_shell": 0.0, "max_maxima_per_scale": 8000}
MATRIX = 512


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _truth(scan: LidcScan, counted: pd.DataFrame, r: ResampledVolume) -> pd.DataFrame:
    """Counted nodules of ``scan``: centre in resampled voxels and the match reach (mm)."""
    rows = counted[counted["series_uid"] == scan.series_uid]
    if rows.empty:
        return pd.DataFrame(columns=["nodule_id", "z", "row", "col", "diameter_mm", "reach_mm"])
    _, nods = cluster_and_find_nodules(scan)
    by_ann = {frozenset(a.annotation_id for a in n.annotations): n for n in nods}
    out = []
    centre = (MATRIX - 1) / 2.0
    ps = float(scan.pixel_spacing)
    for row in rows.itertuples():
        nod = by_ann[frozenset(row.annotation_ids)]
        x, y, z, _ = nodule_spheres(scan, [nod])[0]
        diameter = float(row.diameter_mm) if np.isfinite(row.diameter_mm) else 0.0
        out.append(
            {
                "nodule_id": row.nodule_id,
                "z": (z - float(r.z_positions[0])) / r.spacing[0],
                "row": y / ps + centre,
                "col": x / ps + centre,
                "diameter_mm": diameter,
                "reach_mm": max(diameter / 2.0, 2.0) + 1.5,
            }
        )
    return pd.DataFrame(out)


def _first_hit(truth: pd.DataFrame, cands: pd.DataFrame, spacing: tuple) -> np.ndarray:
    """Rank (candidate_id) of the best candidate within reach of each nodule; -1 if none."""
    ranks = np.full(len(truth), -1, dtype=np.int64)
    if cands.empty or truth.empty:
        return ranks
    c = cands[["z", "row", "col"]].to_numpy() * np.asarray(spacing)
    for i, t in enumerate(truth.itertuples()):
        d = np.sqrt(((c - np.array([t.z, t.row, t.col]) * np.asarray(spacing)) ** 2).sum(axis=1))
        hit = np.flatnonzero(d <= t.reach_mm)
        if hit.size:
            ranks[i] = int(cands["candidate_id"].to_numpy()[hit].min())
    return ranks


def _config(args: argparse.Namespace, **changes: object) -> DetectorConfig:
    default = DetectorConfig()
    radii = tuple(float(x) for x in args.radii.split(",")) if args.radii else default.radii_mm
    config = DetectorConfig(radii_mm=radii, grid_mm=args.grid_mm or default.grid_mm)
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[arg-type]


def _configs(args: argparse.Namespace) -> dict[str, DetectorConfig]:
    """The detector(s) to run on the same volumes: the current one, and the previous one."""
    configs = {"current": _config(args)}
    if args.previous:
        configs["previous"] = _config(args, **PREVIOUS)
    return configs


def _sensitivity_table(hits_df: pd.DataFrame, names: list[str]) -> None:
    n = len(hits_df)
    print("| candidates per scan (top k) | " + " | ".join(f"found, {m}" for m in names) + " |")
    print("|---|" + "---|" * len(names))
    for k in (*TOP_K, None):
        cells = []
        for m in names:
            rank = hits_df[f"rank_{m}"]
            found = int(((rank >= 0) & (rank < (k or 10**9))).sum()) if n else 0
            cells.append(f"{found}/{n} ({found / max(n, 1):.1%})")
        print(f"| {f'top {k}' if k else 'all'} | " + " | ".join(cells) + " |")


def _phantom(args: argparse.Namespace) -> None:
    scans = read_database()
    if args.phantom:
        out = Path(args.phantom)
        manifest = json.loads((out / "phantom.json").read_text())
        pids = sorted({s["patient_id"] for s in manifest["series"]})
    else:
        pids = select_patients(scans, args.patients, seed=args.seed)
        out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cand-phantom-"))
        t0 = time.perf_counter()
        synthesize(
            out,
            pids,
            PhantomConfig(matrix=MATRIX, z_margin_mm=None, seed=args.seed),
            scans=[s for s in scans if s.patient_id in pids],
        )
        print(f"rendered {len(pids)} patients in {time.perf_counter() - t0:.0f} s to {out}")
    sel = [s for s in scans if s.patient_id in set(pids)]
    _, nodules = label_scans(sel, rule=LabelRule())
    counted = nodules[nodules["counted"]]
    configs = _configs(args)
    config = configs["current"]
    per_scan, hits = [], []
    for scan in sel:
        folder = out / "LIDC-IDRI" / scan.patient_id / scan.study_uid / scan.series_uid
        if not folder.exists():
            print(f"  {scan.patient_id}: no rendered series at {folder}", file=sys.stderr)
            continue
        r = resample(load_series(folder), 1.0)
        t0, c0 = time.perf_counter(), time.process_time()
        lung = lung_field(r.hu, r.spacing)
        t_lung, c_lung = time.perf_counter() - t0, time.process_time() - c0
        truth = _truth(scan, counted, r)
        timing: dict[str, float] = {}
        rank_of: dict[str, np.ndarray] = {}
        for name, cfg in configs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            found_by = detect_candidates(r.hu, r.spacing, lung, cfg)
            timing[f"t_detect_s_{name}"] = time.perf_counter() - t0
            timing[f"cpu_detect_s_{name}"] = time.process_time() - c0
            rank_of[name] = _first_hit(truth, found_by, r.spacing)
            if name == "current":
                cands = found_by
        t_det, c_det = timing["t_detect_s_current"], timing["cpu_detect_s_current"]
        ranks = rank_of["current"]
        for i, t in enumerate(truth.itertuples()):
            zi = int(np.clip(round(t.z), 0, r.n_slices - 1))
            ri, ci = round(t.row), round(t.col)
            hits.append(
                {
                    "patient_id": scan.patient_id,
                    "nodule_id": t.nodule_id,
                    "diameter_mm": t.diameter_mm,
                    "rank": int(ranks[i]),
                    **{f"rank_{m}": int(v[i]) for m, v in rank_of.items()},
                    "hu_centre": float(r.hu[zi, ri, ci]),
                    "in_lung_field": bool(lung[zi, ri, ci]),
                }
            )
        per_scan.append(
            {
                "patient_id": scan.patient_id,
                "slices": r.n_slices,
                "lung_slices": int(lung_slices(lung).sum()),
                "candidates": len(cands),
                "nodules": len(truth),
                "found": int((ranks >= 0).sum()),
                "t_lung_s": t_lung,
                "t_detect_s": t_det,
                "cpu_lung_s": c_lung,
                "cpu_detect_s": c_det,
                "ms_per_slice_lung": 1000 * t_lung / r.n_slices,
                "cpu_ms_per_slice_lung": 1000 * c_lung / r.n_slices,
                **timing,
            }
        )
        print(
            f"  {scan.patient_id}: {r.n_slices} slices, {len(cands)} candidates, "
            f"{int((ranks >= 0).sum())}/{len(truth)} nodules, lung {t_lung:.2f} s "
            f"(CPU {c_lung:.2f}), detect {t_det:.2f} s (CPU {c_det:.2f})",
            flush=True,
        )
    scans_df = pd.DataFrame(per_scan)
    hits_df = pd.DataFrame(hits)
    n = len(hits_df)
    print()
    print(f"phantom: {len(scans_df)} scans, {n} counted nodules, {config}")
    if n:
        _sensitivity_table(hits_df, list(configs))
    for name in configs:
        if name != "current":
            print(
                f"{name} detector ({configs[name]}): median detector "
                f"{scans_df[f't_detect_s_{name}'].median():.2f} s wall / "
                f"{scans_df[f'cpu_detect_s_{name}'].median():.2f} s CPU per scan"
            )
    print(
        f"candidates per scan: mean {scans_df['candidates'].mean():.0f}, "
        f"min {scans_df['candidates'].min()}, max {scans_df['candidates'].max()}"
    )
    med = scans_df.median(numeric_only=True)
    print(
        f"median per scan ({med['slices']:.0f} slices of 1 mm, 512 x 512): lung field "
        f"{med['t_lung_s']:.2f} s wall / {med['cpu_lung_s']:.2f} s CPU "
        f"({med['ms_per_slice_lung']:.1f} / {med['cpu_ms_per_slice_lung']:.1f} ms per slice), "
        f"detector {med['t_detect_s']:.2f} s wall / {med['cpu_detect_s']:.2f} s CPU"
    )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if n:
        missed = hits_df[hits_df["rank"] < 0]
        print(f"missed ({len(missed)}):")
        if len(missed):
            print(missed.to_string(index=False))
        big = hits_df[hits_df["rank"] >= 0]
        print(
            "rank of found nodules: median "
            f"{big['rank'].median():.0f}, 90th percentile {big['rank'].quantile(0.9):.0f}"
        )


def _png(r: ResampledVolume, lung: np.ndarray, cands: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    top = cands.head(20)
    ks = sorted({round(z) for z in top["z"].head(4)})
    have = np.flatnonzero(lung_slices(lung))
    ks += [int(k) for k in np.linspace(have[0], have[-1], 8 - len(ks))[1:-1]]
    ks = sorted(set(ks))[:8]
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.5))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), ks, strict=False):
        ax.imshow(np.clip(r.hu[k], -1000, 400), cmap="gray")
        ax.contour(lung[k], [0.5], colors="r", linewidths=0.6)
        near = top[(top["z"] - k).abs() <= top["radius_mm"] / r.spacing[0]]
        for c in near.itertuples():
            rad = max(c.radius_mm / r.spacing[1], 4.0) * 1.6
            ax.add_patch(Circle((c.col, c.row), rad, fill=False, color="yellow", lw=1))
            ax.text(c.col + rad, c.row, str(c.candidate_id), color="yellow", fontsize=8)
        ax.set_title(f"slice {k} (1 mm)", fontsize=9)
    fig.suptitle(f"{title}: lung field (red), top-20 candidates (yellow, id)")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _realct(args: argparse.Namespace) -> None:
    archives = sorted(REALCT.glob("*.tar.xz"))
    if not archives:
        print(f"no real CT archives in {REALCT}")
        return
    print()
    print(
        "| real series | slices at 1 mm | lung slices | candidates | lung field wall (CPU) "
        "| detector wall (CPU) |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arc in archives:
            with tarfile.open(arc) as tf:
                tf.extractall(tmp, filter="data")
            name = arc.name.removesuffix(".tar.xz")
            folder = Path(tmp) / name
            r = resample(load_series(folder), 1.0)
            t0, c0 = time.perf_counter(), time.process_time()
            lung = lung_field(r.hu, r.spacing)
            t_lung, c_lung = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            cands = detect_candidates(r.hu, r.spacing, lung, _config(args))
            t_det, c_det = time.perf_counter() - t0, time.process_time() - c0
            print(
                f"| {name} | {r.n_slices} | {int(lung_slices(lung).sum())} | {len(cands)} | "
                f"{t_lung:.2f} s ({c_lung:.2f} s CPU) | {t_det:.2f} s ({c_det:.2f} s CPU) |",
                flush=True,
            )
            if args.png:
                Path(args.png).mkdir(parents=True, exist_ok=True)
                _png(r, lung, cands, Path(args.png) / f"candidates_{name}.png", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20, help="phantom patients (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantom", help="reuse a phantom folder (with phantom.json)")
    parser.add_argument("--keep", help="render the phantom into this folder and keep it")
    parser.add_argument("--grid-mm", type=float, help="DetectorConfig.grid_mm")
    parser.add_argument("--radii", help="DetectorConfig.radii_mm, comma-separated")
    parser.add_argument(
        "--previous",
        action="store_true",
        help=f"also run the previous detector ({PREVIOUS}) on the same volumes, side by side",
    )
    parser.add_argument("--realct", action="store_true", help="also run on ../shared/realct")
    parser.add_argument("--png", help="folder for the real-CT pictures")
    args = parser.parse_args()
    print("command: " + " ".join([".venv/bin/python", "benchmarks/candidates.py", *sys.argv[1:]]))
    if args.patients > 0 or args.phantom:
        _phantom(args)
    if args.realct:
        _realct(args)
    print(f"peak RSS: {_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
