"""``lungslice synth``: render LIDC-IDRI phantom series (LIDC folder layout)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import ConfigError, LungsliceError


@app.command("synth")
def synth(
    out_dir: Path = typer.Option(
        ..., "--out", help="Folder that receives LIDC-IDRI/<patient>/<study>/<series>/<n>.dcm."
    ),
    patients: str | None = typer.Option(
        None, "--patients", help="Comma-separated patient ids, e.g. LIDC-IDRI-0001,LIDC-IDRI-0002."
    ),
    n: int | None = typer.Option(
        None,
        "--n",
        help="Pick N patients deterministically (stratified: malignant, benign-only and "
        "nodule-free scans all appear).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes identical pixels."),
    matrix: int = typer.Option(512, "--matrix", help="512 (LIDC grid) or 256 (half resolution)."),
    z_margin: float | None = typer.Option(
        None,
        "--z-margin",
        help="Write only the slices from this many mm below the lowest to this many mm above "
        "the highest nodule contour (one contiguous block; default: every slice).",
    ),
    kernel: str = typer.Option(
        "auto",
        "--kernel",
        help="soft, standard, lung, bone, or auto (drawn per scan from the seed).",
    ),
    noise_hu: float | None = typer.Option(
        None,
        "--noise-hu",
        help="Soft-tissue noise std (HU) for every scan (default: the kernel's, scaled by a "
        "dose level drawn per scan and the patient's habitus).",
    ),
    mask_mode: str = typer.Option(
        "consensus", "--mask", help="Nodule masks: consensus (>= 50 % of readers) or reader."
    ),
    preview: Path | None = typer.Option(
        None, "--preview", help="Also save a PNG grid of slices with the readers' contours."
    ),
    into: Path | None = typer.Option(
        None,
        "--into",
        help="Insert the --patients' LIDC-IDRI nodules into this real CT series folder instead "
        "of rendering phantoms; --out receives dicom/, the label tables and insertion.json.",
    ),
    max_nodules: int | None = typer.Option(
        None, "--max-nodules", help="With --into: insert at most this many nodules."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Scans rendered at once, one process each (the pixels do not depend on it).",
    ),
) -> None:
    """Render synthetic chest CT series from the real LIDC-IDRI annotation geometry.

    Each scan keeps its real Study/Series UIDs, slice z positions, pixel spacing,
    slice thickness and the readers' nodule contours; anatomy, vessels and noise
    are synthetic. A manifest (phantom.json) records what was written.

    With --into SERIES_DIR the --patients' nodules are inserted into that real
    series instead (docs/insertion.md): a derived series in OUT/dicom, the label
    tables and insertion.json.
    """
    # heavy imports here: `lungslice --help` must start fast
    from lungslice.lidc.db import read_database
    from lungslice.phantom.config import PhantomConfig
    from lungslice.phantom.preview import phantom_preview
    from lungslice.phantom.select import select_patients
    from lungslice.phantom.writer import MANIFEST, synthesize

    if into is not None:
        _insert(into, out_dir, patients, n, seed, mask_mode, max_nodules)
        return
    try:
        if (patients is None) == (n is None):
            raise ConfigError(
                "synth: give exactly one of --patients (comma-separated ids) or --n N"
            )
        config = PhantomConfig(
            seed=seed,
            matrix=matrix,
            z_margin_mm=z_margin,
            kernel=kernel,
            mask_mode=mask_mode,
            noise_hu=noise_hu,
        )
        if patients is not None:
            ids = [p.strip() for p in patients.split(",") if p.strip()]
            scans = read_database(patient_ids=ids)
        else:
            assert n is not None
            everything = read_database()
            ids = select_patients(everything, n, seed=seed)
            keep = set(ids)
            scans = [s for s in everything if s.patient_id in keep]
        with progress_bar("synth", unit="series") as callback:
            written = synthesize(out_dir, ids, config, callback, scans=scans, workers=workers)
        png = phantom_preview(written, scans, preview) if preview is not None else None
    except LungsliceError as err:
        raise fail(err) from None

    table = Table(title=f"phantom series in {out_dir}")
    for col in ("patient", "slices", "of scan", "z range (mm)", "kernel", "nodules", "habitus"):
        table.add_column(col)
    for s in written:
        z = f"{s.z_positions[0]:.1f} .. {s.z_positions[-1]:.1f}" if s.z_positions else "-"
        nod = str(s.n_nodules) + (f" ({s.lung_pockets} in pockets)" if s.lung_pockets else "")
        v = s.variety
        habitus = str(v.get("habitus", "-")) + (", arms down" if v.get("arms_down") else "")
        table.add_row(
            s.patient_id, str(s.n_slices), str(s.n_slices_scan), z, s.kernel, nod, habitus
        )
    out.print(table)
    crop = "every slice" if z_margin is None else f"nodule z range +- {z_margin} mm"
    console.print(
        f"wrote {sum(s.n_slices for s in written)} slices in {len(written)} series ({crop}); "
        f"manifest {out_dir / MANIFEST}"
    )
    if png is not None:
        console.print(f"preview {png}")


def _insert(
    into: Path,
    out_dir: Path,
    patients: str | None,
    n: int | None,
    seed: int,
    mask_mode: str,
    max_nodules: int | None,
) -> None:
    from lungslice.phantom.insert import INSERTION_FILE, InsertConfig, insert_nodules

    try:
        if patients is None or n is not None:
            raise ConfigError(
                "synth --into: give the LIDC-IDRI patients whose nodules go in with --patients "
                "(comma-separated ids, e.g. LIDC-IDRI-0078); --n is for phantoms only"
            )
        ids = [p.strip() for p in patients.split(",") if p.strip()]
        config = InsertConfig(max_nodules=max_nodules, mask_mode=mask_mode)
        result = insert_nodules(into, ids, out_dir, config=config, seed=seed)
    except LungsliceError as err:
        raise fail(err) from None
    table = Table(title=f"nodules inserted into {into}")
    for col in ("nodule", "from", "row", "col", "z (mm)", "radius (mm)", "slices"):
        table.add_column(col)
    for nod in result.nodules:
        ks = nod.slice_indices
        table.add_row(
            nod.nodule_id,
            nod.source_nodule_id,
            f"{nod.centre_row:.0f}",
            f"{nod.centre_col:.0f}",
            f"{nod.centre_z_mm:.1f}",
            f"{nod.radius_mm:.1f}",
            f"{ks[0]}-{ks[-1]}" if ks else "-",
        )
    out.print(table)
    for s in result.skipped:
        console.print(f"[yellow]not inserted[/yellow] {s['source_nodule_id']}: {s['reason']}")
    console.print(
        f"wrote {result.n_files} files of derived series {result.series_uid} to "
        f"{result.series_dir} (edge sigma {result.edge_sigma_mm:.2f} mm); labels and "
        f"{INSERTION_FILE} in {out_dir}"
    )
