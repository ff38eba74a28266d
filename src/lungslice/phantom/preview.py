"""Preview grids: slices in lung window with the readers' contours drawn.

The same grid is drawn from phantom series (with contours) and from any real
series folder (without), so the two can be compared side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from lungslice.errors import DicomReadError
from lungslice.lidc.nodules import find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom.nodules import LIDC_MATRIX
from lungslice.phantom.writer import PhantomSeries

__all__ = ["LUNG_WINDOW", "Panel", "draw_grid", "phantom_preview", "series_preview"]

#: Lung window (lower, upper) HU: width 1500, level -600.
LUNG_WINDOW = (-1350.0, 150.0)
_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2", "#ff9f0a")


@dataclass(frozen=True, eq=False)
class Panel:
    """One image of a preview grid: HU pixels, a title and contours (render-grid pixels)."""

    hu: np.ndarray
    title: str
    contours: tuple[np.ndarray, ...] = ()


def _hu(path: Path) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DicomReadError(
            f"{path}: cannot read pixel data for the preview ({exc}). Expected a CT image "
            "file; fix: re-run the synth command or point at a readable series."
        ) from exc
    return arr * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def draw_grid(panels: Sequence[Panel], path: str | Path, title: str = "", ncols: int = 4) -> Path:
    """Save panels as a PNG grid in lung window (matplotlib, Agg backend).

    Parameters
    ----------
    panels : sequence of Panel
    path : str or Path
        The PNG to write (folders are created).
    title : str
        Figure title.
    ncols : int
        Panels per row.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.75 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.imshow(panel.hu, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1])
        for i, c in enumerate(panel.contours):
            closed = np.vstack([c, c[:1]])
            ax.plot(closed[:, 0], closed[:, 1], lw=0.7, color=_COLOURS[i % len(_COLOURS)])
        ax.set_title(panel.title, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)
    return out


def phantom_preview(
    series: Sequence[PhantomSeries],
    scans: Sequence[LidcScan],
    path: str | Path,
    n_panels: int = 8,
) -> Path:
    """A grid of written phantom slices with every reader's contour on them.

    Panels show each nodule's middle slice (series in order) and, if fewer
    than ``n_panels``, evenly spaced slices of the first series.

    Parameters
    ----------
    series : sequence of PhantomSeries
        From :func:`lungslice.phantom.writer.synthesize`.
    scans : sequence of LidcScan
        Their annotation records (matched by series UID).
    path : str or Path
        The PNG to write.
    n_panels : int
        Panels in the grid.

    Returns
    -------
    Path
    """
    by_uid = {s.series_uid: s for s in scans}
    wanted: list[tuple[PhantomSeries, LidcScan, int, str]] = []
    for ser in series:
        scan = by_uid[ser.series_uid]
        written = {scan.slice_index(z) for z in ser.z_positions}
        for nod in find_nodules(scan):
            mid = nod.slice_indices[len(nod.slice_indices) // 2]
            if mid in written:
                label = f"{nod.nodule_id} mal {nod.mean_malignancy:.1f}"
                wanted.append((ser, scan, mid, label))
    if series and len(wanted) < n_panels:
        ser = series[0]
        scan = by_uid[ser.series_uid]
        zs = np.asarray(ser.z_positions)
        for j in np.linspace(0, zs.size - 1, n_panels - len(wanted) + 2)[1:-1]:
            wanted.append((ser, scan, scan.slice_index(float(zs[round(j)])), ser.patient_id))
    panels = []
    for ser, scan, k, label in wanted[:n_panels]:
        hu = _hu(ser.folder / f"{scan.n_slices - k}.dcm")
        f = LIDC_MATRIX / hu.shape[0]
        contours = tuple(
            (np.asarray(c.xy, dtype=np.float64) - 0.5 * (f - 1)) / f
            for a in scan.annotations
            for c in a.contours
            if scan.slice_index(c.z) == k
        )
        z = float(scan.slice_zvals[k])
        panels.append(Panel(hu=hu, title=f"{label}\nz {z:.1f} mm", contours=contours))
    return draw_grid(panels, path, title="lungslice phantom (lung window, readers' contours)")


def series_preview(
    folder: str | Path, path: str | Path, n_panels: int = 8, title: str = ""
) -> Path:
    """The same grid from any CT series folder (e.g. a real scan), slices evenly spaced.

    Parameters
    ----------
    folder : str or Path
        A folder of one series' ``.dcm`` files.
    path : str or Path
        The PNG to write.
    n_panels : int
    title : str

    Returns
    -------
    Path
    """
    files = sorted(Path(folder).glob("*.dcm"))
    if not files:
        raise DicomReadError(f"{folder}: no .dcm files to preview. Fix: pass a series folder.")
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    order = np.argsort([float(h.ImagePositionPatient[2]) for h in heads])
    picks = np.linspace(0, len(files) - 1, n_panels + 2)[1:-1]
    panels = []
    for j in picks:
        i = int(order[round(j)])
        z = float(heads[i].ImagePositionPatient[2])
        panels.append(Panel(hu=_hu(files[i]), title=f"z {z:.1f} mm"))
    return draw_grid(panels, path, title=title or f"{Path(folder).name} (lung window)")
