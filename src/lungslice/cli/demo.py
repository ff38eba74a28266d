"""``lungslice demo``: the whole pipeline on a phantom cohort, offline, in minutes."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Output folder."),
    n_patients: int = typer.Option(
        12,
        "--patients",
        help="LIDC-IDRI patients to render (whole 512² series cost ~30 s each on 2 cores; "
        "benchmarks/quality.py runs the large cohort).",
    ),
    n_held_out: int = typer.Option(3, "--held-out", help="Patients kept out and predicted."),
    seed: int = typer.Option(0, "--seed", help="Seeds patients, phantom, folds and classifier."),
    matrix: int = typer.Option(512, "--matrix", help="Phantom in-plane matrix (512 or 256)."),
    folds: int = typer.Option(4, "--folds", help="Patient-grouped cross-validation folds."),
    n_boot: int = typer.Option(200, "--boot", help="Bootstrap replicates for the CIs."),
    kind: str = typer.Option(
        "hgb",
        "--kind",
        help="Candidate classifier: 'hgb' (boosted trees), 'logistic', or 'auto' (GridSearchCV).",
    ),
    c_grid: str = typer.Option(
        "0.01",
        "--c-grid",
        help="Logistic classifier C, comma-separated; several = GridSearchCV (slower).",
    ),
) -> None:
    """Phantom -> labels -> candidates -> patient-grouped evaluation -> model -> predictions.

    Renders whole-series phantoms of real LIDC-IDRI annotation geometry at 512 x 512
    (no download), labels them from the readers' annotations, detects nodule
    candidates in the lung field, extracts efficientnet_lite0 features of
    tri-planar patches around them, cross-validates the candidate classifier by
    patient (FROC/CPM, slice AUC, recall@k next to a random reading order), trains
    a model bundle on the development patients and predicts the held-out ones
    (report.html, key_images.dcm). Phantom figures are not LIDC-IDRI figures.
    """
    from lungslice.demo import DemoConfig, run_demo
    from lungslice.features.runtime import tune_allocator
    from lungslice.model.candidate_eval import HEADLINE_FIGURES
    from lungslice.model.metrics import format_figure

    config = DemoConfig(
        n_patients=n_patients,
        n_held_out=n_held_out,
        seed=seed,
        matrix=matrix,
        n_splits=folds,
        n_boot=n_boot,
        kind=kind,
        c_grid=tuple(float(c) for c in c_grid.split(",")),
    )
    tune_allocator()  # process-wide malloc settings: the CLI owns the process
    t0 = time.perf_counter()
    try:
        with progress_bar("demo", "steps") as bar:
            result = run_demo(
                out_dir, config, progress=bar, stage=lambda s: console.print(f"[bold]{s}[/]")
            )
    except LungsliceError as err:
        raise fail(err) from err
    s = result.summary
    c = s["candidates"]
    out.print(
        f"\n[bold]lungslice demo[/] — {s['patients']} phantom patients ({matrix}², whole "
        f"series), {c['slices']} labelled 1 mm slices, {c['candidates']} candidates "
        f"({c['candidates_per_scan']}/scan, {c['nodules_with_a_candidate']} of {c['nodules']} "
        f"nodules have one), label rule {s['label_rule']}, patient-grouped {folds}-fold CV"
    )
    out.print("[dim]phantom figures, not LIDC-IDRI figures; 95 % CI over patients[/]")
    out.print(f"  {'':<44}{'classifier':<26}detector score alone")
    for key, label in HEADLINE_FIGURES:
        out.print(
            f"  {label:<44}{format_figure(s['figures'].get(key)):<26}"
            f"{format_figure(s['detector_only'].get(key))}"
        )
    out.print(f"  study aggregator (chosen by CV)             {s['aggregator']}")
    out.print("\nheld-out patients:")
    for p in s["predictions"]:
        top = p["recommended"][0] if p["recommended"] else None
        where = (
            f"top finding z {top['z_mm']:.1f} mm, row {top['row']:.0f}, column "
            f"{top['column']:.0f} (p {top['p_nodule']:.2f})"
            if top
            else "no finding"
        )
        out.print(
            f"  {p['patient_id']} ({p['stratum']}, {p['n_nodules']} nodules): p(malignant) "
            f"{p['p_malignant']:.2f}, p(any) {p['p_any_nodule']:.2f}; {where}\n"
            f"    -> {result.out_dir / p['report']}"
        )
    out.print(
        f"\noutputs in {result.out_dir}/: data/ labels/ work/ evaluation/ model/ "
        f"predictions/ demo.json  ({time.perf_counter() - t0:.0f} s)"
    )
    out.print(f"stage times (s): {s['timings_s']}")
