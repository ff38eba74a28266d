"""What a prediction on one CT series found: the typed ``StudyPrediction``.

:class:`lungslice.prediction.Predictor` makes one per CT series; every output
(``result.json``, ``report.html``, the Key Object Selection, the Structured
Report and the Secondary Capture in :mod:`lungslice.report`) is written from
it. Nothing here runs a model or writes a file.

Both bundle kinds fill the same object: a whole-slice bundle's findings are
runs of slices without an in-plane location (``row`` etc. are None); a
candidate bundle's findings are located (row, column, radius on the original
image). Positions are millimetres along the slice normal; probabilities are
floats in [0, 1]; slice indices are into the resampled (1 mm) slices; every
``sop_instance_uid`` is the nearest original image of the source series.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lungslice.errors import BundleMismatchError, LungsliceError

if TYPE_CHECKING:
    from lungslice.dicom.resample import ResampledVolume

__all__ = [
    "CLASS_NAMES",
    "DomainVerdict",
    "Finding",
    "ModelInfo",
    "Recommendation",
    "Scores",
    "SeriesInfo",
    "SliceScores",
    "StudyPrediction",
    "model_id",
]

#: Slice and finding classes, in the order of every ``(n, 3)`` probability array.
CLASS_NAMES: tuple[str, str, str] = ("non-nodule", "benign", "malignant")

#: Length of a model id (hex digits of the SHA-256 of the bundle's model.json).
MODEL_ID_LENGTH = 12


def model_id(bundle_dir: str | Path) -> str:
    """The stable id of a model bundle: the first 12 hex digits of SHA-256(model.json).

    ``model.json`` records the checksum of every file of the bundle, so the id
    changes whenever any of them does, and two copies of one bundle share it.

    Raises
    ------
    BundleMismatchError
        If the folder holds no ``model.json``.
    """
    manifest = Path(bundle_dir) / "model.json"
    if not manifest.is_file():
        raise BundleMismatchError(
            f"model bundle {bundle_dir}: no model.json, so it has no id. Fix: point at a "
            "bundle folder written by `lungslice train` or `lungslice candidates train`."
        )
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:MODEL_ID_LENGTH]


@dataclass(frozen=True)
class SeriesInfo:
    """Identity and geometry of the predicted series.

    Attributes
    ----------
    patient_id, study_uid, series_uid : str
        PatientID (never PatientName or BirthDate), StudyInstanceUID, SeriesInstanceUID.
    n_original_slices, n_resampled_slices : int
        Images loaded, slices classified.
    slice_spacing_mm : float
        Resampled slice spacing.
    pixel_spacing_mm : tuple of float
        Row and column spacing of the original (and resampled) in-plane grid.
    n_lung_slices : int or None
        Resampled slices with a lung field (candidate bundles; None otherwise).
    """

    patient_id: str
    study_uid: str
    series_uid: str
    n_original_slices: int
    n_resampled_slices: int
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    n_lung_slices: int | None = None


@dataclass(frozen=True)
class Scores:
    """Study-level scores.

    Attributes
    ----------
    p_any_nodule, p_malignant : float
        The reported scores (calibrated when ``calibration`` is not None).
    method : str
        The aggregator that made them.
    calibration : str or None
        How they were calibrated (candidate bundles), None when uncalibrated.
    p_any_nodule_uncalibrated, p_malignant_uncalibrated : float or None
        The aggregator's output before calibration (None when not calibrated).
    calibrated_for_input : bool or None
        False when the domain guard fired (the numbers are reported, not
        trusted); None for bundles without the notion (whole-slice bundles).
    """

    p_any_nodule: float
    p_malignant: float
    method: str
    calibration: str | None = None
    p_any_nodule_uncalibrated: float | None = None
    p_malignant_uncalibrated: float | None = None
    calibrated_for_input: bool | None = None


@dataclass(frozen=True)
class DomainVerdict:
    """The domain guard's verdict on this series.

    Attributes
    ----------
    in_domain : bool or None
        None when the bundle has no guard.
    score, threshold : float or None
        Distance of the series' image statistics from the training studies, and
        the threshold it is compared with.
    method : str or None
        The guard's method.
    message : str or None
        "outside the training domain: ..." when it fires (or why it is unchecked).
    furthest : tuple of dict
        The image statistics furthest outside the training range, furthest
        first: ``{"feature", "value", "train_min", "train_max", "sd_outside"}``
        (:meth:`lungslice.model.domain.DomainModel.furthest`).
    """

    in_domain: bool | None
    score: float | None
    threshold: float | None
    method: str | None
    message: str | None
    furthest: tuple[dict[str, Any], ...] = ()

    @property
    def fired(self) -> bool:
        """True when the guard says the input is outside the training domain."""
        return self.in_domain is False

    def explanation(self) -> str:
        """The statistics outside the training range in words, '' when none are.

        E.g. ``"noise_anisotropy 0.41 (training 0.000-0.069)"``.
        """
        parts = []
        for f in self.furthest:
            value = f.get("value")
            shown = "not measurable" if value is None else f"{value:.3g}"
            parts.append(
                f"{f['feature']} {shown} (training {f['train_min']:.3g} to {f['train_max']:.3g})"
            )
        return "; ".join(parts)


@dataclass(frozen=True)
class Finding:
    """One finding: a located candidate (candidate bundles) or a run of slices.

    Attributes
    ----------
    id : int
        1-based, most probable first.
    slice_index : int
        The finding's best resampled slice (its centre or peak).
    z_mm, z_min, z_max : float
        Position of that slice and the finding's extent along z.
    p_nodule, p_benign, p_malignant : float
        Class probabilities of the finding (at the peak for runs of slices).
    max_p_malignant, mean_p_malignant, max_p_benign, mean_p_benign : float
        Over the finding's slices (equal to the finding's own for located ones).
    sop_instance_uid : str
        The original image nearest to ``slice_index``.
    instance_number : int or None
        Its InstanceNumber.
    n_slices : int or None
        Resampled slices of a run (whole-slice bundles).
    row, column : float or None
        In-plane centre in pixels of the original image (located findings).
    x_mm, y_mm, radius_mm : float or None
        Patient coordinates of the centre and the detector's blob radius.
    detector_score : float or None
        The blob detector's response.
    """

    id: int
    slice_index: int
    z_mm: float
    z_min: float
    z_max: float
    p_nodule: float
    p_benign: float
    p_malignant: float
    max_p_malignant: float
    mean_p_malignant: float
    max_p_benign: float
    mean_p_benign: float
    sop_instance_uid: str
    instance_number: int | None
    n_slices: int | None = None
    row: float | None = None
    column: float | None = None
    x_mm: float | None = None
    y_mm: float | None = None
    radius_mm: float | None = None
    detector_score: float | None = None

    @property
    def located(self) -> bool:
        """True when the finding has an in-plane location (row, column, radius)."""
        return self.row is not None and self.column is not None and self.radius_mm is not None

    @property
    def label(self) -> str:
        """The most probable class: ``non-nodule``, ``benign`` or ``malignant``."""
        probs = (1.0 - self.p_nodule, self.p_benign, self.p_malignant)
        return CLASS_NAMES[int(np.argmax(probs))]


@dataclass(frozen=True)
class Recommendation:
    """One slice to read, in reading order.

    Attributes
    ----------
    rank : int
        1 = read first.
    slice_index : int
        Resampled slice.
    z_mm : float
        Its position.
    finding : int or None
        Id of the finding it shows.
    p_malignant, p_benign : float
        Smoothed slice probabilities (whole-slice) or the finding's (candidates).
    sop_instance_uid : str
        Nearest original image.
    instance_number : int or None
        Its InstanceNumber.
    p_nodule : float or None
        The finding's p(nodule) (candidate bundles).
    row, column, x_mm, y_mm, radius_mm : float or None
        The finding's location (candidate bundles).
    """

    rank: int
    slice_index: int
    z_mm: float
    finding: int | None
    p_malignant: float
    p_benign: float
    sop_instance_uid: str
    instance_number: int | None
    p_nodule: float | None = None
    row: float | None = None
    column: float | None = None
    x_mm: float | None = None
    y_mm: float | None = None
    radius_mm: float | None = None

    @property
    def located(self) -> bool:
        """True when the recommendation carries an in-plane location."""
        return self.row is not None and self.column is not None and self.radius_mm is not None

    @classmethod
    def of_finding(cls, f: Finding, *, with_p_nodule: bool = True) -> Recommendation:
        """The recommendation to read finding ``f`` (ranked by its id) at its best slice."""
        return cls(
            rank=f.id,
            slice_index=f.slice_index,
            z_mm=f.z_mm,
            finding=f.id,
            p_malignant=f.p_malignant,
            p_benign=f.p_benign,
            sop_instance_uid=f.sop_instance_uid,
            instance_number=f.instance_number,
            p_nodule=f.p_nodule if with_p_nodule else None,
            row=f.row,
            column=f.column,
            x_mm=f.x_mm,
            y_mm=f.y_mm,
            radius_mm=f.radius_mm,
        )


@dataclass(frozen=True, eq=False)
class SliceScores:
    """Per resampled slice probabilities and their original images.

    Attributes
    ----------
    z_mm : numpy.ndarray
        ``(n,)`` positions.
    probs : numpy.ndarray
        ``(n, 3)`` p(non-nodule), p(benign), p(malignant) (unsmoothed head
        output, or the covering findings' for candidate bundles).
    sop_instance_uids : tuple of str
        Nearest original image per slice.
    instance_numbers : tuple of (int or None)
        Their InstanceNumbers.
    reason : tuple of (str or None) or None
        Why a slice scores 0 (``"no lung field"``), candidate bundles only.
    smoothed : numpy.ndarray or None
        ``(n, 3)`` smoothed probabilities (whole-slice bundles): what the
        recommendations and z-profile use.
    """

    z_mm: np.ndarray
    probs: np.ndarray
    sop_instance_uids: tuple[str, ...]
    instance_numbers: tuple[int | None, ...]
    reason: tuple[str | None, ...] | None = None
    smoothed: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.z_mm.shape[0])

    @property
    def profile(self) -> np.ndarray:
        """``(n, 3)`` what to plot along z: smoothed when there is, else raw."""
        return self.probs if self.smoothed is None else self.smoothed


@dataclass(frozen=True)
class ModelInfo:
    """Which model made the prediction.

    Attributes
    ----------
    bundle : str
        Bundle directory.
    model_id : str
        :func:`model_id` of the bundle (12 hex digits).
    kind : {"whole-slice", "candidates"}
        The bundle kind.
    backbone, weights_id : str
        Backbone name and the SHA-256 of its weights.
    layers : tuple of str
        Hidden layers used as features.
    inputs : dict
        Input settings (whole-slice inputs or candidate patches).
    head : Any
        Head kind (whole-slice) or classifier parameters (candidates).
    label_rule : dict
        The label rule the bundle was trained with.
    aggregate : dict
        Aggregation settings.
    detector : dict or None
        The candidate detector's settings (candidate bundles).
    """

    bundle: str
    model_id: str
    kind: Literal["whole-slice", "candidates"]
    backbone: str
    weights_id: str
    layers: tuple[str, ...]
    inputs: Mapping[str, Any]
    head: Any
    label_rule: Mapping[str, Any]
    aggregate: Mapping[str, Any]
    detector: Mapping[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class StudyPrediction:
    """The prediction for one CT series of a study.

    Attributes
    ----------
    series : SeriesInfo
        Identity and geometry.
    scores : Scores
        Study-level scores.
    domain : DomainVerdict or None
        The domain guard's verdict (None when the bundle has no guard).
    findings : tuple of Finding
        Most probable first.
    recommendations : tuple of Recommendation
        The top-k slices to read.
    slices : SliceScores
        Every resampled slice.
    model : ModelInfo
        Bundle identity and settings.
    provenance : dict
        The PredictConfig, library versions, Python, platform, creation time.
    timings : dict
        Seconds per inference stage.
    run : dict
        Process, host and start/finish times of the run.
    volume : ResampledVolume
        The resampled volume the slices belong to (pixels for figures).
    source_files : dict
        SOPInstanceUID -> file of every image of the source series
        (what the DICOM writers reference and copy the patient/study from).
    heatmaps : numpy.ndarray or None
        ``(k, h, w)`` class activation maps of p(malignant) for the
        recommendations (whole-slice bundles, when asked for).
    """

    series: SeriesInfo
    scores: Scores
    domain: DomainVerdict | None
    findings: tuple[Finding, ...]
    recommendations: tuple[Recommendation, ...]
    slices: SliceScores
    model: ModelInfo
    provenance: Mapping[str, Any]
    timings: Mapping[str, float]
    run: Mapping[str, Any] = field(default_factory=dict)
    volume: ResampledVolume | None = field(default=None, repr=False)
    source_files: Mapping[str, Path] = field(default_factory=dict, repr=False)
    heatmaps: np.ndarray | None = field(default=None, repr=False)

    @property
    def out_of_domain(self) -> bool:
        """True when the domain guard fired."""
        return self.domain is not None and self.domain.fired

    def require_volume(self, purpose: str) -> ResampledVolume:
        """The resampled volume, which a writer that draws images needs.

        Raises
        ------
        LungsliceError
            If the prediction carries none (``purpose`` says what was wanted).
        """
        if self.volume is None:
            raise LungsliceError(
                f"prediction of series {self.series.series_uid} carries no volume, so {purpose}. "
                "Fix: keep the volume (Predictor.predict sets it)."
            )
        return self.volume

    def finding(self, finding_id: int) -> Finding:
        """The finding with this id.

        Raises
        ------
        KeyError
            If there is none.
        """
        for f in self.findings:
            if f.id == finding_id:
                return f
        raise KeyError(f"no finding {finding_id}; ids: {[f.id for f in self.findings]}")
