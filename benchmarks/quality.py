"""Does lungslice find the nodule? One run, every variant side by side, with CIs.

Renders a phantom cohort of LIDC-IDRI patients (stratified: malignant,
benign-only, nodule-free) at 512 x 512 over whole series (no z-crop), labels it
from the readers' annotations, and evaluates on the same patient-grouped folds:

- ``whole-slice``: the seed's path (pooled features of whole slices, logistic head);
- ``detector score alone``: the 3D blob detector's score as p(nodule);
- ``measurements alone``: the classifier on the detector's measurements of each
  candidate (score, radius, LoG, Hessian eigenvalue ratios, HU around the
  centre, distance to the lung edge) without CNN features;
- ``CNN alone, imagenet``: the classifier on the pretrained features only;
- ``candidates, imagenet``: both (the default model);
- ``candidates, random``: both, with a random-weight network (no transfer).

Figures (95 % bootstrap CI over patients): FROC/CPM as LUNA16 defines them,
slice ROC-AUC, nodule recall@k next to a random reading order, study AUC, and
localisation: for each detected nodule, whether the reported centre of its
first finding lies inside the readers' consensus contour dilated by 3 mm.
Writes ``quality.md`` and ``quality.json`` into ``--out``.

Usage::

    .venv/bin/python benchmarks/quality.py [--patients 80] [--folds 5] [--out quality-output]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungslice.features.candidates import CandidateConfig, extract_candidates
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import extract_dataset
from lungslice.features.runtime import tune_allocator
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, _id_prefixes, label_scans, write_labels
from lungslice.lidc.nodules import find_nodules
from lungslice.model.candidate_eval import (
    build_candidate_set,
    candidate_figures,
    cross_validate_candidates,
    detector_probabilities,
    figures_markdown,
    findings_tables,
    froc_curve_of,
)
from lungslice.model.candidate_head import GRID_KINDS, classifier_grid
from lungslice.model.evaluate import EvaluateConfig, evaluate
from lungslice.model.froc import plot_froc
from lungslice.model.heads import HeadConfig
from lungslice.model.metrics import bootstrap, format_figure, json_safe
from lungslice.phantom import PhantomConfig, synthesize
from lungslice.phantom.nodules import nodule_masks
from lungslice.phantom.select import select_patients


def localisation(
    nodules: pd.DataFrame, scans: dict[str, Any], dilate_mm: float = 3.0
) -> np.ndarray:
    """Per nodule with a finding: is the finding's centre inside the dilated consensus contour?"""
    out = []
    by_id: dict[str, Any] = {}
    cohort = list(scans.values())
    for scan, prefix in zip(cohort, _id_prefixes(cohort), strict=True):
        for nod in find_nodules(scan, id_prefix=prefix):
            by_id[nod.nodule_id] = (scan, nod)
    for r in nodules.itertuples():
        if not np.isfinite(r.located_row) or r.nodule_id not in by_id:
            continue
        scan, nod = by_id[r.nodule_id]
        box, masks = nodule_masks(scan, nod)
        zs = np.asarray(scan.slice_zvals, dtype=np.float64)
        ks = np.array(sorted(masks))
        k = ks[np.argmin(np.abs(zs[ks] - r.located_z_mm))]
        if abs(zs[k] - r.located_z_mm) > dilate_mm + 0.5 * scan.slice_thickness:
            out.append(False)
            continue
        mask = masks[int(k)][0]
        rad = dilate_mm / scan.pixel_spacing
        dist = ndi.distance_transform_edt(~mask)
        i, j = round(r.located_row) - box[0], round(r.located_col) - box[1]
        inside = 0 <= i < mask.shape[0] and 0 <= j < mask.shape[1] and dist[i, j] <= rad
        out.append(bool(inside))
    return np.asarray(out, dtype=bool)


def write_report(
    out: Path,
    rows: dict[str, dict[str, dict[str, float]]],
    loc: dict[str, np.ndarray],
    curves: dict[str, pd.DataFrame],
    timings: dict[str, float],
    n_patients: int,
    args: argparse.Namespace,
    argv: list[str] | None,
) -> None:
    """``quality.md``, ``quality.json`` and ``froc.png`` of what has run so far."""
    plot_froc(
        curves, out / "froc.png", title=f"{n_patients} phantom patients, {args.folds}-fold CV"
    )
    cmd = "python benchmarks/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# quality: {n_patients} phantom patients, 512², whole series, patient-grouped "
        f"{args.folds}-fold CV, 95 % CI over patients ({args.boot} replicates)",
        "",
        f"Command: `{cmd}`",
        "",
        figures_markdown(rows),
        "",
        "Localisation (first finding on each detected nodule inside the consensus contour "
        "dilated by 3 mm):",
        "",
    ]
    for name, v in loc.items():
        lines.append(
            f"- {name}: {v.mean():.3f} of {v.size} detected nodules" if v.size else f"- {name}: n/a"
        )
    lines += ["", f"Stage times (s): {json.dumps({k: round(v) for k, v in timings.items()})}", ""]
    text = "\n".join(lines)
    (out / "quality.md").write_text(text)
    (out / "quality.json").write_text(
        json.dumps(
            json_safe(
                {
                    "figures": rows,
                    "localisation": {k: v.tolist() for k, v in loc.items()},
                    "timings_s": timings,
                    "command": cmd,
                }
            ),
            indent=1,
        )
    )
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=80)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--c", default="0.003,0.01,0.03", help="candidate classifier C grid")
    parser.add_argument("--pca", type=int, default=128, help="PCA components of the classifier")
    parser.add_argument(
        "--kind",
        choices=GRID_KINDS,
        default="hgb",
        help="classifier family; auto: GridSearchCV chooses between both",
    )
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the measurements-alone classifier"
    )
    parser.add_argument(
        "--cnn-alone", action="store_true", help="also the classifier on CNN features alone"
    )
    parser.add_argument("--out", type=Path, default=Path("quality-output"))
    parser.add_argument("--no-random", action="store_true", help="skip the random-weight run")
    parser.add_argument("--no-whole-slice", action="store_true", help="skip the seed's path")
    args = parser.parse_args(argv)
    tune_allocator()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    scans = read_database()
    patients = select_patients(scans, args.patients, seed=args.seed)
    cohort = [s for s in scans if s.patient_id in set(patients)]
    phantom = PhantomConfig(seed=args.seed, matrix=512)
    if not (out / "data" / "phantom.json").is_file():  # a rerun reuses the rendered cohort
        synthesize(out / "data", patients, phantom, scans=cohort)
    rule = LabelRule()
    slices, nodules = label_scans(cohort, rule=rule)
    write_labels(out / "labels", slices, nodules, rule=rule, source="pylidc")
    timings["phantom+labels"] = time.perf_counter() - t
    print(f"phantom: {len(patients)} patients in {timings['phantom+labels']:.0f} s", flush=True)

    grid = classifier_grid(args.kind, [float(c) for c in args.c.split(",")], args.pca)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    curves = {}
    loc: dict[str, np.ndarray] = {}
    weights = ["imagenet"] + ([] if args.no_random else ["random"])
    for w in weights:
        t = time.perf_counter()
        config = CandidateConfig(features=FeatureConfig(weights=w))
        ex = extract_candidates(out / "data", out / "work", config)
        timings[f"candidates {w}"] = time.perf_counter() - t
        print(ex.summary(), flush=True)
        t = time.perf_counter()
        cs = build_candidate_set(out / "work", out / "labels", rule, key=config.key)
        cv = cross_validate_candidates(cs, n_splits=args.folds, seed=args.seed, param_grid=grid)
        variants = {f"candidates, {w}": cv.probs}
        chosen = {f"candidates, {w}": cv.params}
        if w == "imagenet":
            variants["detector score alone"] = detector_probabilities(cs.candidates)
            if not args.no_ablation and cs.n_measurements:
                views = [("measurements", "measurements alone")]
                views += [("cnn", "CNN alone")] if args.cnn_alone else []
                for view, name in views:
                    sub = cs.feature_view(view)
                    g = grid if view == "cnn" else classifier_grid(args.kind, [0.1, 1.0], None)
                    res = cross_validate_candidates(
                        sub, n_splits=args.folds, seed=args.seed, param_grid=g
                    )
                    variants[f"{name}, {w}" if view == "cnn" else name] = res.probs
                    chosen[f"{name}, {w}" if view == "cnn" else name] = res.params
        for name, probs in variants.items():
            tables = findings_tables(cs, probs)
            rows[name] = bootstrap(
                tables, n_boot=args.boot, seed=args.seed, figures=candidate_figures
            )
            curves[name] = froc_curve_of(tables)
            loc[name] = localisation(tables.nodules, {s.series_uid: s for s in cohort})
        timings[f"evaluation {w}"] = time.perf_counter() - t
        print(f"{w}: chosen {json.dumps(chosen)}; {json.dumps(cs.summary())}", flush=True)
        write_report(out, rows, loc, curves, timings, len(patients), args, argv)

    if not args.no_whole_slice:
        t = time.perf_counter()
        extract_dataset(out / "data", out / "work", FeatureConfig())
        whole = evaluate(
            out / "work",
            out / "labels",
            out / "whole-slice",
            head_config=HeadConfig(C_grid=(0.1,)),
            config=EvaluateConfig(n_splits=args.folds, n_boot=args.boot),
            rules=[rule],
            key=FeatureConfig().key,
            seed=args.seed,
        )
        figs = dict(whole["rules"][rule.name]["figures"])
        if "slice.roc_auc.non-nodule" in figs:
            figs["slice.roc_auc.nodule"] = figs["slice.roc_auc.non-nodule"]
        rows = {"whole-slice (seed)": figs, **rows}
        timings["whole-slice"] = time.perf_counter() - t

    write_report(out, rows, loc, curves, timings, len(patients), args, argv)
    for name, r in rows.items():
        print(name, "CPM", format_figure(r.get("froc.cpm")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
