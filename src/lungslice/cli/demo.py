"""``lungslice demo``: the whole pipeline on a phantom cohort, offline, in minutes."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.demo import DemoConfig, run_demo
from lungslice.errors import LungsliceError
from lungslice.features.runtime import tune_allocator
from lungslice.model.metrics import format_figure


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Output folder."),
    n_patients: int = typer.Option(24, "--patients", help="LIDC-IDRI patients to render."),
    n_held_out: int = typer.Option(4, "--held-out", help="Patients kept out and predicted."),
    seed: int = typer.Option(0, "--seed", help="Seeds patients, phantom, folds and heads."),
    matrix: int = typer.Option(256, "--matrix", help="Phantom in-plane matrix (256 or 512)."),
    folds: int = typer.Option(4, "--folds", help="Patient-grouped cross-validation folds."),
    n_boot: int = typer.Option(200, "--boot", help="Bootstrap replicates for the CIs."),
    c_grid: str = typer.Option(
        "0.1",
        "--c-grid",
        help="Logistic regularisation strengths, comma-separated; several = inner CV (slower).",
    ),
) -> None:
    """Phantom -> labels -> features -> patient-grouped evaluation -> model -> predictions.

    Renders a phantom of real LIDC-IDRI annotation geometry (no download), labels
    it from the readers' annotations, extracts efficientnet_lite0 features,
    cross-validates by patient, trains a model bundle on the development patients
    and predicts the held-out ones (report.html, key_images.dcm). Phantom figures
    are not LIDC-IDRI figures.
    """
    config = DemoConfig(
        n_patients=n_patients,
        n_held_out=n_held_out,
        seed=seed,
        matrix=matrix,
        n_splits=folds,
        n_boot=n_boot,
        c_grid=tuple(float(c) for c in c_grid.split(",")),
    )
    tune_allocator()  # process-wide malloc settings (PERF_NOTES): the CLI owns the process
    t0 = time.perf_counter()
    try:
        with progress_bar("demo", "steps") as bar:
            result = run_demo(
                out_dir, config, progress=bar, stage=lambda s: console.print(f"[bold]{s}[/]")
            )
    except LungsliceError as err:
        raise fail(err) from err
    s = result.summary
    out.print(
        f"\n[bold]lungslice demo[/] — {s['patients']} phantom patients, {s['slices']} "
        f"labelled 1 mm slices ({s['label_rule']}), patient-grouped {folds}-fold CV"
    )
    out.print("[dim]phantom figures, not LIDC-IDRI figures; 95 % CI over patients[/]")
    names = {
        "slice.roc_auc.macro": "slice ROC-AUC (macro)",
        "slice.roc_auc.malignant": "slice ROC-AUC (malignant)",
        "slice.roc_auc.benign": "slice ROC-AUC (benign)",
        "study.roc_auc.malignant": "study ROC-AUC (malignant)",
        "study.roc_auc.any_nodule": "study ROC-AUC (any nodule)",
        "nodule.recall@1.any": "nodule recall@1",
        "nodule.recall@3.any": "nodule recall@3",
        "nodule.recall@5.any": "nodule recall@5",
        "nodule.recall@10.any": "nodule recall@10",
        "nodule.skippable_at_95_recall": "slices skippable at 95 % recall",
    }
    for key, label in names.items():
        out.print(f"  {label:<34} {format_figure(s['figures'].get(key))}")
    out.print(f"  study aggregator (chosen by CV)    {s['aggregator']}")
    out.print("\nheld-out patients:")
    for p in s["predictions"]:
        out.print(
            f"  {p['patient_id']} ({p['stratum']}, {p['n_nodules']} nodules): p(malignant) "
            f"{p['p_malignant']:.2f}, p(any) {p['p_any_nodule']:.2f} -> "
            f"{result.out_dir / p['report']}"
        )
    out.print(
        f"\noutputs in {result.out_dir}/: data/ labels/ work/ evaluation/ model/ "
        f"predictions/ demo.json  ({time.perf_counter() - t0:.0f} s)"
    )
    out.print(f"stage times (s): {s['timings_s']}")
