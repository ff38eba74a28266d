"""Which calibrator for candidates and study scores? Measured on held-out patients.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/domain_calibration.py \\
        --quality /tmp/quality40 --key 17ca2cc3c529f824 --oof /tmp/q/oof40.npz \\
        [--folds 5] [--seed 0] [--plot docs/images/calibration_candidates.png]

``--quality`` is the output folder of ``benchmarks/quality.py`` (its ``work``
candidate cache ``--key``, by default the current ``CandidateConfig()``'s, and
its ``labels``). The out-of-fold candidate probabilities of the bundle's
default classifier (``lungslice candidates train``: boosted trees,
patient-grouped ``--folds``) are computed once and cached in ``--oof``.

Every calibrator is then compared *nested*: each outer fold's patients are
calibrated by a calibrator fitted on the other folds' out-of-fold
predictions (:func:`lungslice.model.calibration.cross_calibrate`), so every
figure is on patients neither the classifier nor the calibrator saw.

Candidates (p(nodule) = p(benign) + p(malignant), 3-class calibrators):
ECE (10 equal-width bins, as ``lungslice evaluate`` reports), ECE on 10
equal-mass bins, log loss, Brier score, the share of saturated outputs
(p < 1e-3 or > 1 - 1e-3) and how many nodules hide among the outputs below
1e-3 (a saturated output is only harmless when it is right).

Studies (p(any nodule) of the findings, each aggregator): the same figures
with Platt scaling, isotonic regression or nothing on top of the calibrated
candidates. Nothing is asserted; the tables go to docs/domain.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from lungslice.features.candidates import CandidateConfig
from lungslice.model.calibration import (
    CANDIDATE_METHODS,
    Calibrator,
    cross_calibrate,
    ece_bootstrap,
    expected_calibration_error,
    plot_reliability,
    saturation_rate,
)
from lungslice.model.candidate_eval import (
    build_candidate_set,
    cross_validate_candidates,
    findings_tables,
    fold_of_rows,
)
from lungslice.model.candidate_head import classifier_grid
from lungslice.model.findings import FindingsConfig
from lungslice.model.metrics import format_figure

log = logging.getLogger("domain_calibration")

_EPS = 1e-12
#: Ranges of p(nodule) for the per-range table (the 10 equal-width bins hide the top).
RANGES = ((0.0, 1e-3), (1e-3, 1e-2), (1e-2, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.01))


def equal_mass_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` bins holding the same number of predictions each."""
    order = np.argsort(p, kind="stable")
    bins = np.array_split(order, n_bins)
    return float(sum(len(b) * abs(y[b].mean() - p[b].mean()) for b in bins if len(b)) / len(p))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def row(name: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int) -> str:
    ece = ece_bootstrap(y, p, groups, n_boot=n_boot, seed=0)
    low = p < 1e-3
    hidden = f"{int(y[low].sum())}/{int(low.sum())}"
    return (
        f"| {name} | {format_figure(ece)} | {equal_mass_ece(y, p):.4f} | {log_loss(y, p):.4f} | "
        f"{np.mean((p - y) ** 2):.4f} | {saturation_rate(p):.3f} | {hidden} |"
    )


HEADER = (
    "| calibrator | ECE (10 equal-width bins) [95 % CI] | ECE (10 equal-mass bins) | log loss "
    "| Brier | saturated | nodules among p < 1e-3 |\n|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", type=Path, required=True)
    parser.add_argument("--key", default=None, help="candidate cache key")
    parser.add_argument("--oof", type=Path, required=True, help="cache of the CV probabilities")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--plot", type=Path, default=None, help="reliability diagram PNG")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    key = args.key or CandidateConfig().key
    cs = build_candidate_set(args.quality / "work", args.quality / "labels", key=key)
    if args.oof.is_file():
        z = np.load(args.oof, allow_pickle=False)
        probs = z["probs"]
        folds = [tuple(str(p) for p in f.split(",")) for f in z["folds"].tolist()]
    else:
        cv = cross_validate_candidates(
            cs,
            n_splits=args.folds,
            seed=args.seed,
            param_grid=classifier_grid("hgb", [0.01, 0.1], 128),
        )
        probs, folds = cv.probs, cv.folds
        args.oof.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.oof, probs=probs, folds=np.array([",".join(f) for f in folds]))
    print(f"out-of-fold probabilities ready in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{cs.summary()}\n")

    keep = cs.y >= 0
    y3 = cs.y[keep]
    yb = (y3 > 0).astype(np.int64)
    groups = cs.groups[keep]
    fold = fold_of_rows(groups, folds)
    p3 = probs[keep]
    print(
        f"Candidates: {keep.sum()} labelled, {yb.sum()} on a nodule ({yb.mean():.2%}), "
        f"{len(set(groups))} patients, {args.folds} patient folds; nested (calibrator fitted "
        "on the other folds)\n"
    )
    print(HEADER)
    calibrated: dict[str, np.ndarray] = {"none": p3}
    for method in CANDIDATE_METHODS:
        calibrated[method] = cross_calibrate(p3, y3, fold, method)
    for name, q in calibrated.items():
        print(row(name, yb, q[:, 1] + q[:, 2], groups, args.boot))
    print("\nPer range of predicted p(nodule): mean predicted vs observed share (count)\n")
    print("| range | " + " | ".join(calibrated) + " |")
    print("|---" * (len(calibrated) + 1) + "|")
    for lo, hi in RANGES:
        cells = []
        for q in calibrated.values():
            pn = q[:, 1] + q[:, 2]
            m = (pn >= lo) & (pn < hi)
            cells.append(
                f"{pn[m].mean():.4f} vs {yb[m].mean():.4f} ({int(m.sum())})" if m.any() else "-"
            )
        print(f"| {lo:g}-{min(hi, 1.0):g} | " + " | ".join(cells) + " |")
    for name, q in calibrated.items():
        pn = q[:, 1] + q[:, 2]
        print(
            f"{name}: mean p(nodule) {pn.mean():.4f} (share of nodules {yb.mean():.4f}), "
            f"{int((pn > 1 - 1e-3).sum())} above 0.999"
        )
    for method in CANDIDATE_METHODS:
        c = Calibrator(method).fit(p3, y3)
        print(
            f"{method} fitted on every patient: T {c.temperature_:.3f}, biases {c.bias_.round(2)}"
        )
    if args.plot is not None:
        base = calibrated["temperature"]
        best = calibrated["bias_temperature"]
        plot_reliability(
            yb,
            base[:, 1] + base[:, 2],
            best[:, 1] + best[:, 2],
            args.plot,
            title="candidates, p(nodule), held-out patients",
            labels=("temperature", "temperature + class bias"),
        )
        plot_reliability(
            yb,
            p3[:, 1] + p3[:, 2],
            best[:, 1] + best[:, 2],
            args.plot.with_name(args.plot.stem + "_raw.png"),
            title="candidates, p(nodule), held-out patients",
            labels=("uncalibrated", "temperature + class bias"),
        )
        print(f"\nwrote {args.plot}")

    for cand_name in ("none", "temperature", "bias_temperature"):
        full = np.zeros_like(probs)
        full[keep] = calibrated[cand_name]
        full[~keep] = probs[~keep]
        for agg in ("max", "noisy_or"):
            st = findings_tables(cs, full, FindingsConfig(aggregator=agg)).studies
            ys = st["has_any"].to_numpy(dtype=np.int64)
            ps = st["p_any_nodule"].to_numpy(dtype=np.float64)
            sg = st["patient_id"].astype(str).to_numpy()
            sf = fold_of_rows(sg, folds)
            print(
                f"\nStudies, candidates calibrated by {cand_name}, aggregator {agg}: "
                f"{len(ys)} studies, {ys.sum()} with a nodule\n"
            )
            print(HEADER)
            print(row("none", ys, ps, sg, args.boot))
            for m in ("platt", "isotonic"):
                print(row(m, ys, cross_calibrate(ps, ys, sf, m), sg, args.boot))
    ece_all = expected_calibration_error(yb, p3[:, 1] + p3[:, 2])
    log.info("uncalibrated candidate ECE %.4f", ece_all)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
