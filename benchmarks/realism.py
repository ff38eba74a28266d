"""How real does the phantom look? Old and new phantom against real chest CT, in one run.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/realism.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/realism.py --patients 8 --previews docs/images
    # several older phantoms side by side (each from a git archive of its commit):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/realism.py \
        --old-commit f5ebfb7 --old-commit 9b8de5c

For every series (each real series in ../shared/realct, unpacked to a
temporary folder; each of N phantom patients rendered at 512 x 512 with seed 0
by today's code and by the code of each ``--old-commit``, run from a ``git archive``
of that commit in a subprocess) the lung-field slices (lung field > 5 % of the
body, at most 40, evenly spaced) are turned into the project's whole-slice
inputs (three HU windows, 224 x 224) and pooled features of the default
backbone (efficientnet_lite0, ImageNet weights from its package). The features
are projected on the first ``--pca`` principal components of all sets together
(a Gaussian per set of 8-40 slices cannot be fitted in 1280 dimensions), and
the Fréchet distance is computed between every pair of series:

- real vs real (three scanners, kernels, patients): the floor a phantom series
  can be expected to reach against a real one;
- old phantom vs real and new phantom vs real: the figure the phantom is judged
  by, as a ratio to the real-vs-real median (goal: <= 1.5);
- phantom vs phantom within each version: how different the phantom's own
  patients are from each other (the variety).

Beside it, per series, the calibration figures of lungslice.phantom.calibrate
(lung-field HU median, voxels > -500 HU, noise in air and soft tissue) and the
lung texture statistic (GLCM contrast in the lung window). Nothing is asserted;
the numbers go to docs/phantom.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

from lungslice.lidc.db import read_database
from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, render, select_patients
from lungslice.phantom.calibrate import (
    Figures,
    body_mask,
    figures,
    frechet_distance,
    lung_field,
    read_folder_hu,
)

REPO = Path(__file__).resolve().parents[1]
REALCT = REPO / ".." / "shared" / "realct"
REAL = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm", "chest-ct-ge-petct-4mm")
OLD_COMMIT = "f5ebfb7"

_OLD_RENDER = """
import json, sys
import numpy as np
import lungslice
root, spec, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if not lungslice.__file__.startswith(root):
    raise SystemExit(f"old code not imported: {lungslice.__file__} is outside {root}")
from lungslice.lidc.db import read_database
from lungslice.phantom import PhantomConfig, render
scans = {s.patient_id: s for s in read_database(patient_ids=list(spec))}
arrays = {pid: render(scans[pid], PhantomConfig(seed=0), np.array(idx)).hu
          for pid, idx in spec.items()}
np.savez(out, **arrays)
"""


def lung_slices(hu: np.ndarray, max_slices: int = 40) -> np.ndarray:
    """The slices whose lung field covers > 5 % of the body (at most ``max_slices``)."""
    keep = []
    for k, sl in enumerate(hu):
        body = body_mask(sl)
        if lung_field(sl, body).sum() > 0.05 * max(int(body.sum()), 1):
            keep.append(k)
    if len(keep) > max_slices:
        keep = [keep[int(i)] for i in np.linspace(0, len(keep) - 1, max_slices).round()]
    return hu[keep]


def _real_series(tmp: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in REAL:
        archive = REALCT / f"{name}.tar.xz"
        if not archive.is_file():
            print(f"(missing {archive}; skipped)")
            continue
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / name, filter="data")
        (folder,) = [p for p in (tmp / name).iterdir() if p.is_dir()]
        hu, _ = read_folder_hu(folder)
        out[name] = hu
    return out


def _picks(scan: LidcScan, n: int = 60) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, scan.n_slices - 1, n).round()})


def _old_phantom(scans: list[LidcScan], commit: str, tmp: Path) -> dict[str, np.ndarray]:
    src = tmp / f"old-{commit}"
    src.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    spec = {s.patient_id: _picks(s) for s in scans}
    out = tmp / f"old-{commit}.npz"
    env = dict(os.environ, PYTHONPATH=str(src / "src"))
    subprocess.run(
        [sys.executable, "-c", _OLD_RENDER, str(src / "src"), json.dumps(spec), str(out)],
        check=True,
        env=env,
    )
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def _features(sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from lungslice.features.backbones import load_backbone
    from lungslice.features.inputs import InputConfig, make_inputs

    backbone = load_backbone("efficientnet_lite0")
    config = InputConfig()
    out = {}
    with torch.inference_mode():
        for name, hu in sets.items():
            rows = []
            for i in range(0, len(hu), 16):
                x = make_inputs(hu[i : i + 16].astype(np.float32), config, backbone.data_config)
                rows.append(backbone(x).numpy())
            out[name] = np.concatenate(rows).astype(np.float64)
    return out


def _project(feats: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    allf = np.concatenate(list(feats.values()))
    mu = allf.mean(axis=0)
    _, _, vt = np.linalg.svd(allf - mu, full_matrices=False)
    basis = vt[:k].T
    return {n: (f - mu) @ basis for n, f in feats.items()}


def _pairs(a: list[str], b: list[str] | None, feats: dict[str, np.ndarray]) -> list[float]:
    if b is None:
        return [frechet_distance(feats[x], feats[y]) for i, x in enumerate(a) for y in a[i + 1 :]]
    return [frechet_distance(feats[x], feats[y]) for x in a for y in b]


def _figures_row(label: str, figs: list[Figures]) -> str:
    def med(values: list[float]) -> float:
        v = [x for x in values if np.isfinite(x)]
        return float(median(v)) if v else float("nan")

    p50 = med([f.lung_percentiles.get("p50", np.nan) for f in figs])
    dense = med([100 * f.lung_above_minus500 for f in figs])
    return (
        f"| {label} | {sum(f.lung_slices for f in figs)} | {p50:.0f} | {dense:.1f} % | "
        f"{med([f.noise_air for f in figs]):.1f} | {med([f.noise_soft_tissue for f in figs]):.1f} "
        f"| {med([f.glcm_contrast for f in figs]):.2f} |"
    )


def _habitus_preview(scans: list[LidcScan], real: dict[str, np.ndarray], path: Path) -> None:
    """Four phantom chests of different habitus (arms down among them) beside the real series."""
    from lungslice.phantom.preview import Panel, draw_grid

    want = ["thin", "average", "overweight or obese", "arms down"]
    found: dict[str, Panel] = {}
    for scan in scans:
        k = int(scan.n_slices * 0.55)
        r = render(scan, PhantomConfig(seed=0), np.array([k]))
        sh = r.shape
        assert sh is not None
        fov_half = 256 * scan.pixel_spacing
        if sh.arms_down:
            # only arms that the nodules' adapted trunk left inside the field of view
            kind = "arms down" if sh.half_width + sh.arm_gap + 1.5 * sh.arm_rx < fov_half else ""
        else:
            kind = "overweight or obese" if sh.habitus in ("overweight", "obese") else sh.habitus
        if kind in want and kind not in found:
            title = (
                f"phantom {scan.patient_id[-4:]}: {sh.habitus}"
                f"{', arms down' if sh.arms_down else ''}, fat {sh.fat:.0f} mm, {r.kernel.name}"
            )
            found[kind] = Panel(r.hu[0].astype(np.float32), title)
        if len(found) == len(want):
            break
    panels = [found[k] for k in want if k in found]
    for name, hu in real.items():
        sl = lung_slices(hu)
        panels.append(Panel(sl[len(sl) // 2].astype(np.float32), f"real {name}"))
    draw_grid(panels, path, title="phantom chests (top) and the real series (bottom)", ncols=4)
    print(f"wrote {path}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=8, help="phantom patients per version")
    parser.add_argument(
        "--old-commit",
        action="append",
        help=f"a phantom to compare against (repeatable; default {OLD_COMMIT})",
    )
    parser.add_argument("--pca", type=int, default=16, help="principal components kept")
    parser.add_argument("--previews", type=Path, help="write phantom_preview.png here")
    args = parser.parse_args()
    commits = args.old_commit or [OLD_COMMIT]
    print(
        "command: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/realism.py "
        + " ".join(sys.argv[1:])
    )
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    t0 = time.perf_counter()
    scans = read_database()
    ids = select_patients(scans, args.patients, seed=0)
    chosen = [s for s in scans if s.patient_id in set(ids)]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        real = _real_series(tmp)
        new = {
            s.patient_id: render(s, PhantomConfig(seed=0), np.array(_picks(s))).hu for s in chosen
        }
        olds = {f"old {c}": _old_phantom(chosen, c, tmp) for c in commits}
        if args.previews is not None:
            pool = [s for s in scans if s.n_slices >= 100][:80]
            _habitus_preview(pool, real, args.previews / "phantom_preview.png")
    sets: dict[str, np.ndarray] = {}
    figs: dict[str, Figures] = {}
    versions = [*olds, "new"]
    for group, vols in (("real", real), *olds.items(), ("new", new)):
        for name, hu in vols.items():
            key = f"{group}:{name}"
            sets[key] = lung_slices(hu)
            figs[key] = figures(hu)
    print(f"rendered and read in {time.perf_counter() - t0:.0f} s; lung slices per series: "
          + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))  # fmt: skip
    feats = _project(_features({k: v for k, v in sets.items() if len(v) >= 2}), args.pca)
    names = {g: [k for k in feats if k.startswith(g + ":")] for g in ("real", *versions)}
    rr = _pairs(names["real"], None, feats)
    rows = [("real vs real (floor)", rr)]
    rows += [(f"{v} phantom vs real", _pairs(names[v], names["real"], feats)) for v in versions]
    rows += [
        (f"{v} phantom vs {v} phantom (variety)", _pairs(names[v], None, feats)) for v in versions
    ]
    floor = median(rr) if rr else float("nan")
    print()
    print(
        f"Fréchet distance (FD), efficientnet_lite0 pooled features, first {args.pca} PCs, "
        "per series pair:"
    )
    print("| pair | pairs | median | min | max | median / real-vs-real median |")
    print("|---|---|---|---|---|---|")
    for label, d in rows:
        if d:
            print(f"| {label} | {len(d)} | {median(d):.1f} | {min(d):.1f} | {max(d):.1f} | "
                  f"{median(d) / floor:.2f} |")  # fmt: skip
    per_real = {
        v: {r: [frechet_distance(feats[p], feats[r]) for p in names[v]] for r in names["real"]}
        for v in versions
    }
    print()
    print("| real series | " + " | ".join(f"{v} phantom: median FD" for v in versions) + " |")
    print("|---|" + "---|" * len(versions))
    for r in names["real"]:
        cells = " | ".join(f"{median(per_real[v][r]):.1f}" for v in versions)
        print(f"| {r[5:]} | {cells} |")
    print()
    print("| series | lung slices | lung-field HU p50 | lung voxels > -500 HU | noise air (HU) | "
          "noise soft tissue (HU) | GLCM contrast (lung window, 32 levels) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in names["real"]:
        print(_figures_row(name, [figs[name]]))
    for group in versions:
        label = f"{group} phantom (median of {len(names[group])} patients)"
        print(_figures_row(label, [figs[k] for k in names[group]]))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
