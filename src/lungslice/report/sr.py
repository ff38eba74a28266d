"""``findings_sr.dcm``: the findings as a DICOM Comprehensive SR (TID 1500 Measurement Report).

Built with highdicom. The report holds, under "Imaging Measurements":

- one measurement group for the study (TID 1501): the study scores
  (p(malignant), DCM 111047 "Probability of cancer"; p(any nodule)) and text
  items saying that this is research software, not for diagnosis, how the
  scores were calibrated and, when the domain guard fired, "outside the
  training domain: scores not calibrated for this scanner or protocol";
- one group per reported finding: the findings the recommendations show
  (the key images'), in rank order; ``result.json`` lists every finding (a
  candidate bundle scores hundreds of candidates per study, nearly all of
  them improbable, which no reader wants as annotations):

  - located findings (candidate bundles) are planar ROI groups (TID 1410)
    whose region is a SCOORD CIRCLE (centre and a point on the circle, in
    pixel coordinates of the referenced original image, top-left corner of
    the image at 0,0) on the original image nearest to the finding's centre;
  - runs of slices (whole-slice bundles, no in-plane location) are TID 1501
    groups that reference that image as their source.

  Each carries finding type SCT 27925004 "Nodule", finding site SCT 39607008
  "Lung", its class as a qualitative evaluation ("Predicted class", private code
  ``CLASS`` = SCT 21594007 "Malignant", SCT 30807003 "Benign" or SCT 17621005 "Normal"
  for the non-nodule class), p(malignant) (DCM 111047), p(nodule) and
  p(benign) (private codes of the ``99LUNGSLICE`` scheme, declared in the
  Coding Scheme Identification Sequence) and the radius in mm (SCT 131190003).

Every referenced image is an instance of the predicted source series and is
listed in the evidence; patient and study come from the source images
(PatientName, BirthDate, Sex left empty unless asked).
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lungslice.dicom.kos import evidence_copy
from lungslice.report.derived import (
    RESEARCH_NOTICE,
    SERIES_NUMBERS,
    derived_uid,
    series_description,
    source_headers,
)
from lungslice.study import Finding, StudyPrediction

__all__ = [
    "CLASS_CODES",
    "OUT_OF_DOMAIN_TEXT",
    "PRIVATE_SCHEME",
    "reported_findings",
    "write_findings_sr",
]

log = logging.getLogger(__name__)

#: Designator of lungslice's private codes (``99`` prefix: a private scheme).
PRIVATE_SCHEME = "99LUNGSLICE"

#: Coded value of each class.
CLASS_CODES: dict[str, hd.sr.CodedConcept] = {
    "malignant": hd.sr.CodedConcept("21594007", "SCT", "Malignant"),
    "benign": hd.sr.CodedConcept("30807003", "SCT", "Benign"),
    "non-nodule": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
}

#: What the SR says when the domain guard fired.
OUT_OF_DOMAIN_TEXT = (
    "outside the training domain: scores not calibrated for this scanner or protocol"
)

_P_MALIGNANT = codes.DCM.ProbabilityOfCancer
_P_NODULE = hd.sr.CodedConcept("P-NODULE", PRIVATE_SCHEME, "Probability of nodule")
_P_BENIGN = hd.sr.CodedConcept("P-BENIGN", PRIVATE_SCHEME, "Probability of benign nodule")
_P_ANY_NODULE = hd.sr.CodedConcept("P-ANY-NODULE", PRIVATE_SCHEME, "Probability of any nodule")
_STUDY_P_MALIGNANT = hd.sr.CodedConcept(
    "P-MAL-STUDY", PRIVATE_SCHEME, "Probability of a malignant nodule in the study"
)
# not DCM 121071 "Finding": TID 1501 uses that concept for the finding type
_CLASS = hd.sr.CodedConcept("CLASS", PRIVATE_SCHEME, "Predicted class")
_COMMENT = codes.DCM.Comment
_UNITLESS = codes.UCUM.NoUnits
_MM = codes.UCUM.Millimeter


def _probability(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(np.clip(value, 0.0, 1.0)), unit=_UNITLESS)


def _algorithm(prediction: StudyPrediction) -> hd.sr.AlgorithmIdentification:
    version = str(prediction.provenance.get("versions", {}).get("lungslice") or "unknown")
    return hd.sr.AlgorithmIdentification(
        name="lungslice", version=version, parameters=[f"model {prediction.model.model_id}"]
    )


def reported_findings(prediction: StudyPrediction) -> list[Finding]:
    """The findings the SR reports: those the recommendations show, in rank order."""
    ids = dict.fromkeys(r.finding for r in prediction.recommendations if r.finding is not None)
    return [prediction.finding(i) for i in ids]


def _texts(prediction: StudyPrediction) -> list[str]:
    texts = [RESEARCH_NOTICE]
    n = len(reported_findings(prediction))
    texts.append(
        f"{n} of {len(prediction.findings)} findings reported: those on the recommended "
        "slices (result.json lists all)"
    )
    s = prediction.scores
    if s.calibration:
        texts.append(f"study scores calibrated: {s.calibration}")
    if prediction.out_of_domain:
        texts.append(OUT_OF_DOMAIN_TEXT)
    return texts


def _study_group(prediction: StudyPrediction) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    s = prediction.scores
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(prediction, "findings SR", "tracking study"),
            identifier="lungslice study scores",
        ),
        algorithm_id=_algorithm(prediction),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        measurements=[
            _probability(_STUDY_P_MALIGNANT, s.p_malignant),
            _probability(_P_ANY_NODULE, s.p_any_nodule),
        ],
    )
    # TID 1501 qualitative evaluations may be TEXT: the notices a reader must see
    container = group[0]
    for text in _texts(prediction):
        container.ContentSequence.append(
            hd.sr.TextContentItem(
                name=_COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    return group


def _finding_measurements(f: Finding) -> list[hd.sr.Measurement]:
    out = [
        _probability(_P_MALIGNANT, f.p_malignant),
        _probability(_P_NODULE, f.p_nodule),
        _probability(_P_BENIGN, f.p_benign),
    ]
    if f.radius_mm is not None:
        out.append(hd.sr.Measurement(name=codes.SCT.Radius, value=float(f.radius_mm), unit=_MM))
    return out


def _finding_group(
    prediction: StudyPrediction, f: Finding, image: Dataset
) -> (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(prediction, "findings SR", f"tracking finding {f.id}"),
        identifier=f"lungslice finding {f.id}",
    )
    common = {
        "tracking_identifier": tracking,
        "finding_type": codes.SCT.Nodule,
        "algorithm_id": _algorithm(prediction),
        "finding_sites": [hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        "measurements": _finding_measurements(f),
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(name=_CLASS, value=CLASS_CODES[f.label])
        ],
    }
    if not f.located:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
            **common,
        )
    assert f.row is not None and f.column is not None and f.radius_mm is not None
    spacing = [float(v) for v in image.PixelSpacing]  # row spacing, column spacing
    # SCOORD pixel coordinates: (column, row), the top-left corner of the image at (0, 0),
    # so the centre of pixel (r, c) is (c + 0.5, r + 0.5)
    cx, cy = f.column + 0.5, f.row + 0.5
    radius_px = f.radius_mm / spacing[1]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[cx, cy], [cx + radius_px, cy]], dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=region,
        **common,
    )


def _coding_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "lungslice private codes"
    item.CodingSchemeResponsibleOrganization = "lungslice"
    return item


def write_findings_sr(
    prediction: StudyPrediction, out_path: str | Path, *, keep_patient_name: bool = False
) -> Path:
    """Write the findings of a prediction as a Comprehensive SR (TID 1500).

    Parameters
    ----------
    prediction : StudyPrediction
        The prediction; its ``source_files`` must hold the referenced images.
    out_path : str or Path
        Where to write ``findings_sr.dcm``.
    keep_patient_name : bool
        Copy PatientName/BirthDate/Sex from the source images (empty by default).

    Raises
    ------
    LungsliceError
        If a finding names an image outside the source series.
    """
    findings = reported_findings(prediction)
    uids = [f.sop_instance_uid for f in findings]
    if not uids:  # the study group still needs an image of the series for its evidence
        uids = [r.sop_instance_uid for r in prediction.recommendations][:1]
    if not uids:
        uids = list(prediction.source_files)[:1]
    headers = source_headers(prediction, uids)
    evidence = {uid: evidence_copy(ds, keep_patient_name) for uid, ds in headers.items()}
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_study_group(prediction)]
    groups += [_finding_group(prediction, f, evidence[f.sop_instance_uid]) for f in findings]
    version = str(prediction.provenance.get("versions", {}).get("lungslice") or "unknown")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(prediction, "findings SR", f"device {version}"),
            name=f"lungslice {version}",
            manufacturer_name="lungslice",
            model_name=f"model {prediction.model.model_id}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    document = hd.sr.ComprehensiveSR(
        evidence=list(evidence.values()),
        content=report,
        series_instance_uid=derived_uid(prediction, "findings SR", "series"),
        series_number=SERIES_NUMBERS["findings SR"],
        sop_instance_uid=derived_uid(prediction, "findings SR", "instance"),
        instance_number=1,
        manufacturer="lungslice",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    document.SeriesDescription = series_description("findings SR", prediction.model.model_id)
    document.CodingSchemeIdentificationSequence = [_coding_scheme()]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    document.save_as(out, enforce_file_format=True)
    log.info(
        "wrote findings SR with %d findings on %d images to %s",
        len(findings),
        len(evidence),
        out,
    )
    return out
