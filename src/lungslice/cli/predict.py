"""``lungslice predict``: recommendations, report and DICOM outputs for a new study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lungslice.cli import options as opt
from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError

if TYPE_CHECKING:
    from lungslice.dicom.discover import DicomIndex
    from lungslice.dicom.geometry import LoadConfig


def preflight(study_dir: Path, series_uid: str | None, config: LoadConfig) -> DicomIndex:
    """Index the study from headers and refuse it, before any model is loaded, if no series fits.

    A study whose CT series are all rejected raises the rejection of the first
    one as the loader states it (what is damaged, which file, the flag that
    opts out), rather than a generic "no CT series".

    Raises
    ------
    NoCTSeriesError
        If the folder holds no CT series at all (or not ``series_uid``).
    SeriesGeometryError, DicomReadError, CoverageError
        The first CT series' own rejection when none is usable.
    """
    from lungslice.dicom.discover import index_tree
    from lungslice.dicom.volume import load_series
    from lungslice.errors import DicomReadError, NoCTSeriesError

    index = index_tree(study_dir, workers=1, config=config)
    series = index.series
    if series_uid is not None:
        series = series[series["series_uid"] == series_uid]
        if series.empty:
            listed = ", ".join(index.series["series_uid"].astype(str)) or "none"
            raise NoCTSeriesError(
                f"{study_dir}: no series with SeriesInstanceUID {series_uid}; the folder holds "
                f"{len(index.files)} file(s) in series: {listed}"
            )
    ct = series[series["modality"] == "CT"]
    if (ct["status"] == "ok").any():
        return index
    if ct.empty:
        kinds = ", ".join(f"{m} ({n})" for m, n in series["modality"].value_counts().items())
        skipped = index.summary()["files_skipped"]
        raise NoCTSeriesError(
            f"{study_dir}: no CT series among {len(index.files)} file(s)"
            + (f"; other series: {kinds}" if kinds else "")
            + (f"; files skipped: {skipped}" if skipped else "")
            + " - point predict at a folder holding a chest CT series"
        )
    for row in ct.itertuples():
        if str(row.reason).startswith("unreadable file"):
            raise DicomReadError(f"{study_dir}: series {row.series_uid} is damaged: {row.reason}")
        # The loader's own refusal names what is damaged and the opt-out.
        load_series(index, series_uid=str(row.series_uid), config=config)
    why = "; ".join(f"series {r.series_uid}: {r.reason}" for r in ct.itertuples())
    raise NoCTSeriesError(f"{study_dir}: no usable CT series: {why}")


@app.command("predict")
def predict_command(
    study_dir: Path = typer.Argument(
        ..., exists=True, help="Folder with the study's DICOM files (any layout)."
    ),
    model: Path = typer.Option(
        ..., "--model", "-m", help="Model bundle directory (written by `lungslice train`)."
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write result.json, report.html and the DICOM outputs (key_images.dcm, "
        "findings_sr.dcm, summary_sc.dcm) here (one subfolder per series when the study has "
        "several CT series).",
    ),
    series: str | None = typer.Option(
        None,
        "--series-uid",
        "--series",
        help="Only this SeriesInstanceUID (default: every CT series).",
    ),
    top_k: int = typer.Option(5, "--top-k", help="Slices to recommend per series."),
    hide_patient_id: bool = typer.Option(
        False, "--hide-patient-id", help="Leave PatientID out of report.html."
    ),
    keep_patient_name: bool = typer.Option(
        False,
        "--kos-patient-name",
        "--dicom-patient-name",
        help="Copy PatientName/BirthDate/Sex into the DICOM outputs (left empty by default).",
    ),
    no_key_images: bool = typer.Option(
        False, "--no-key-images", help="Do not write key_images.dcm (Key Object Selection)."
    ),
    no_sr: bool = typer.Option(
        False, "--no-sr", help="Do not write findings_sr.dcm (Comprehensive SR, TID 1500)."
    ),
    no_summary: bool = typer.Option(
        False, "--no-summary", help="Do not write summary_sc.dcm (Secondary Capture)."
    ),
    no_heatmaps: bool = typer.Option(
        False, "--no-heatmaps", help="Skip the class activation maps in the report."
    ),
    fmt: str = typer.Option(
        "table", "--format", help="What to print: 'table' (a summary) or 'json' (the records)."
    ),
    allow_gaps: bool = opt.ALLOW_GAPS,
    allow_irregular: bool = opt.ALLOW_IRREGULAR,
    tilt: str = opt.TILT,
    duplicates: str = opt.DUPLICATES,
    min_slices: int = opt.MIN_SLICES,
    allow_missing_rescale: bool = opt.ALLOW_MISSING_RESCALE,
    hu_check: str = typer.Option(
        "refuse",
        "--hu-check",
        help="Air near -1000 HU and lung-range voxels present? 'refuse', 'warn' or 'off'.",
    ),
    min_coverage: float = typer.Option(
        30.0,
        "--min-coverage",
        help="Shortest z-extent (mm) of a series to predict on; 0 accepts any.",
    ),
) -> None:
    """Classify every slice of a study's CT series and recommend the slices to read first.

    Runs the settings recorded in the model bundle: DICOM -> HU -> 1 mm slices ->
    backbone features -> head -> study aggregation. Prints a summary, or with
    --format json the same records result.json holds (docs/result-schema.md).
    """
    if fmt not in ("table", "json"):
        raise typer.BadParameter("expected 'table' or 'json'", param_hint="--format")
    from lungslice.outputs import check_output_location

    try:
        # Everything that can be refused is refused before the model loads.
        if out_dir is not None:
            check_output_location(out_dir, what="--out")
        load = opt.load_config_from(locals(), min_coverage_mm=min_coverage)
        preflight(study_dir, series, load)
    except LungsliceError as err:
        raise fail(err) from err

    from lungslice.features.runtime import tune_allocator
    from lungslice.prediction import PredictConfig, Predictor, results_table

    config = PredictConfig(
        series_uid=series,
        top_k=top_k,
        hide_patient_id=hide_patient_id,
        keep_patient_name=keep_patient_name,
        write_key_images=not no_key_images,
        write_findings_sr=not no_sr,
        write_summary=not no_summary,
        heatmaps=not no_heatmaps,
        load=load,
    )
    tune_allocator()  # process-wide malloc settings: the CLI owns the process
    try:
        predictor = Predictor(model)
        with progress_bar("predict", "series") as bar:
            preds = predictor.predict_study(study_dir, out_dir, config, progress=bar)
    except LungsliceError as err:
        raise fail(err) from err
    results = [p.result for p in preds]
    if fmt == "json":
        out.print_json(json.dumps(results if len(results) > 1 else results[0]))
        return
    table = results_table(results)
    if hide_patient_id:
        table = table.drop(columns="patient_id")
    out.print(table.to_string(index=False))
    for p in preds:
        domain = p.result.get("domain") or {}
        if domain.get("in_domain") is False:
            console.print(
                f"[bold red]warning:[/] series {p.result['study']['series_uid']}: "
                f"{domain['message']} (domain score {domain['score']} > threshold "
                f"{domain['threshold']}); the probabilities are uncalibrated for this input"
            )
            far = "; ".join(
                f"{f['feature']} {f['value']:.3g} (training {f['train_min']:.3g} to "
                f"{f['train_max']:.3g})"
                for f in domain.get("furthest") or ()
                if f.get("value") is not None
            )
            if far:
                console.print(f"  furthest from the training scans: {far}")
        for r in p.result["recommendations"]:
            where = (
                f", finding at row {r['row']:.0f} column {r['column']:.0f}, "
                f"radius {r['radius_mm']:.1f} mm"
                if "row" in r
                else ""
            )
            out.print(
                f"  #{r['rank']}: z {r['z_mm']:.1f} mm -> InstanceNumber {r['instance_number']} "
                f"(SOPInstanceUID {r['sop_instance_uid']}), "
                + (f"p(nodule) {r['p_nodule']:.2f}, " if r.get("p_nodule") is not None else "")
                + f"p(malignant) {r['p_malignant']:.2f}"
                + where
            )
        for kind, path in p.outputs.items():
            console.print(f"[dim]{kind}:[/] {path}")
