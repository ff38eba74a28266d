"""``lungslice predict``: recommendations, report and key images for a new study."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError
from lungslice.features.runtime import tune_allocator
from lungslice.prediction import PredictConfig, Predictor, results_table


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
        help="Write result.json, report.html and key_images.dcm here (one subfolder per "
        "series when the study has several CT series).",
    ),
    series: str | None = typer.Option(
        None, "--series", help="Only this SeriesInstanceUID (default: every CT series)."
    ),
    top_k: int = typer.Option(5, "--top-k", help="Slices to recommend per series."),
    hide_patient_id: bool = typer.Option(
        False, "--hide-patient-id", help="Leave PatientID out of report.html."
    ),
    keep_patient_name: bool = typer.Option(
        False,
        "--kos-patient-name",
        help="Copy PatientName/BirthDate/Sex into key_images.dcm (left empty by default).",
    ),
    no_heatmaps: bool = typer.Option(
        False, "--no-heatmaps", help="Skip the class activation maps in the report."
    ),
    fmt: str = typer.Option(
        "table", "--format", help="What to print: 'table' (a summary) or 'json' (the records)."
    ),
) -> None:
    """Classify every slice of a study's CT series and recommend the slices to read first.

    Runs the settings recorded in the model bundle: DICOM -> HU -> 1 mm slices ->
    backbone features -> head -> study aggregation. Prints a summary, or with
    --format json the same records result.json holds (docs/result-schema.md).
    """
    if fmt not in ("table", "json"):
        raise typer.BadParameter("expected 'table' or 'json'", param_hint="--format")
    config = PredictConfig(
        series_uid=series,
        top_k=top_k,
        hide_patient_id=hide_patient_id,
        keep_patient_name=keep_patient_name,
        heatmaps=not no_heatmaps,
    )
    tune_allocator()  # process-wide malloc settings (PERF_NOTES): the CLI owns the process
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
        for r in p.result["recommendations"]:
            out.print(
                f"  #{r['rank']}: z {r['z_mm']:.1f} mm -> InstanceNumber {r['instance_number']} "
                f"(SOPInstanceUID {r['sop_instance_uid']}), p(malignant) {r['p_malignant']:.2f}"
            )
        for kind, path in p.outputs.items():
            console.print(f"[dim]{kind}:[/] {path}")
