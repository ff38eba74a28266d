"""Insert LIDC-IDRI nodules into the real series of ../shared/realct and look at them.

Usage::

    .venv/bin/python benchmarks/insertion.py [--patients LIDC-IDRI-0078] [--seed 0]
        [--png docs/images/insertion_example.png]

For each host: inserts the patients' nodules, prints per nodule the host slice,
mean HU inside (opacity >= 0.5 on the centre slice) before and after, and the
residual noise (std after a 5 x 5 local mean) inside the nodule and in the
surrounding lung, and draws the largest nodule's centre slice before and after
(lung window, the changed pixels outlined) into one PNG.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage as ndi

from lungslice.dicom.volume import load_series
from lungslice.phantom.insert import insert_nodules

REALCT = Path(__file__).resolve().parents[1] / ".." / "shared" / "realct"
NAMES = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm", "chest-ct-ge-petct-4mm")


def _noise(hu: np.ndarray, mask: np.ndarray) -> float:
    local = ndi.uniform_filter(hu.astype(np.float64), 5)
    return float(np.std((hu - local)[mask])) if mask.sum() > 10 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="LIDC-IDRI-0078")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=Path("docs/images/insertion_example.png"))
    args = parser.parse_args()
    patients = [p.strip() for p in args.patients.split(",") if p.strip()]
    fig, axes = plt.subplots(len(NAMES), 2, figsize=(8, 4 * len(NAMES)), dpi=110)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for row, name in enumerate(NAMES):
            with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
                tar.extractall(root / "hosts", filter="data")
            host_dir = root / "hosts" / name
            res = insert_nodules(host_dir, patients, root / "out" / name, seed=args.seed)
            host = load_series(host_dir)
            derived = load_series(res.series_dir)
            print(f"{name}: edge sigma {res.edge_sigma_mm:.2f} mm, {len(res.nodules)} nodules")
            for n in res.nodules:
                k = int(np.abs(host.z_positions - n.centre_z_mm).argmin())
                diff = derived.hu[k] != host.hu[k]
                yy, xx = np.mgrid[0 : diff.shape[0], 0 : diff.shape[1]]
                r_px = 0.5 * n.radius_mm / host.spacing[1]
                core = diff & ((yy - n.centre_row) ** 2 + (xx - n.centre_col) ** 2 < r_px**2)
                ring = ndi.binary_dilation(diff, iterations=12) & ~ndi.binary_dilation(
                    diff, iterations=4
                )
                print(
                    f"  {n.source_nodule_id:>18} -> slice {k:3d} radius {n.radius_mm:5.1f} mm: "
                    f"inner HU {host.hu[k][core].mean():7.1f} -> {derived.hu[k][core].mean():7.1f}"
                    f", noise inside {_noise(derived.hu[k], core):5.1f} HU, lung around "
                    f"{_noise(host.hu[k], ring):5.1f} HU"
                )
            big = max(res.nodules, key=lambda n: n.radius_mm)
            k = int(np.abs(host.z_positions - big.centre_z_mm).argmin())
            half = int(40.0 / host.spacing[1])
            r0 = max(int(big.centre_row) - half, 0)
            c0 = max(int(big.centre_col) - half, 0)
            box = (slice(r0, r0 + 2 * half), slice(c0, c0 + 2 * half))
            diff = (derived.hu[k] != host.hu[k])[box]
            for col, (vol, title) in enumerate(((host, "host"), (derived, "inserted"))):
                ax = axes[row, col]
                ax.imshow(vol.hu[k][box], cmap="gray", vmin=-1350, vmax=150)
                if col == 1:
                    ax.contour(diff, levels=[0.5], colors="yellow", linewidths=0.6)
                ax.set_title(
                    f"{name}\n{title}: {big.source_nodule_id}, slice {k}, 80 mm box",
                    fontsize=8,
                )
                ax.axis("off")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
