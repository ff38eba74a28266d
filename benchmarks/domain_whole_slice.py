"""The whole-slice bundle's domain guard on phantom and real series, side by side.

Whole-slice extraction measures each series' study descriptor on the full-
resolution 1 mm volume before shrinking it to the network's input size
(:func:`lungslice.features.extract.load_resampled_with_descriptor`), and
``predict`` measures a new study the same way
(:func:`lungslice.features.extract.whole_slice_descriptor`). This script does
both on the same data and prints what the guard of ``lungslice train`` would
say (``--at-input-size``: measured on the shrunk volume instead, for comparison):

* every phantom series of ``--data`` through extraction's loader;
* held-out pass rate, nested: ``--folds`` patient folds, each scored by a guard
  fitted (:func:`lungslice.model.domain.fit_guard`, its own CV threshold) on the
  other patients;
* each real series through predict's path (full resolution, then the resize),
  scored by the guard fitted on all phantom series.

Example (the demo's 12 phantom patients and the three real GE series)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/domain_whole_slice.py \\
        --data /tmp/fresh/demo-output/data --real /tmp/g_realct --folds 4
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from lungslice.dicom.resample import resample
from lungslice.dicom.volume import load_series
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import (
    find_series,
    load_resampled,
    load_resampled_with_descriptor,
    whole_slice_descriptor,
)
from lungslice.features.inputs import resize_slices
from lungslice.model.domain import fit_guard, grouped_folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="phantom DICOM tree (LIDC layout)")
    ap.add_argument("--real", type=Path, help="folder of real series folders (optional)")
    ap.add_argument("--size", type=int, default=224, help="network input size (default 224)")
    ap.add_argument("--at-input-size", action="store_true", help="measure after the shrink")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = FeatureConfig()
    t0 = time.perf_counter()
    X, pids = [], []
    for job in find_series(args.data):
        if job.rejected:
            print(f"skipped {job.series_uid}: {job.rejected}")
            continue
        if args.at_input_size:
            X.append(whole_slice_descriptor(load_resampled(job, config, args.size)))
        else:
            X.append(load_resampled_with_descriptor(job, config, args.size)[1])
        pids.append(job.patient_id)
    groups = np.asarray(pids)
    print(f"{len(X)} phantom series of {np.unique(groups).size} patients")
    folds = grouped_folds(groups, args.folds, args.seed)
    ratios = np.empty(len(X))
    for f in np.unique(folds):
        test = folds == f
        train = [x for x, t in zip(X, test, strict=True) if not t]
        guard, _ = fit_guard(train, groups[~test].tolist(), min_studies=3, seed=args.seed)
        assert guard is not None
        ratios[test] = guard.score(np.stack([x for x, t in zip(X, test, strict=True) if t]))
        ratios[test] /= guard.threshold_
    print(
        f"held-out phantoms passing (nested {args.folds}-fold): {np.sum(ratios <= 1)}/"
        f"{ratios.size}; score/threshold median {np.median(ratios):.2f}, "
        f"max {ratios.max():.2f}"
    )
    guard, note = fit_guard(X, pids, min_studies=3, seed=args.seed)
    assert guard is not None
    print(f"guard on all: {note}")
    if args.real is not None:
        for folder in sorted(p for p in args.real.iterdir() if p.is_dir()):
            rs = resample(load_series(folder), config.slice_spacing)
            if args.at_input_size:
                _, rows, cols = rs.hu.shape
                sp = rs.spacing
                spacing = (sp[0], sp[1] * rows / args.size, sp[2] * cols / args.size)
                hu = resize_slices(rs.hu, args.size).numpy()
                rs = dataclasses.replace(rs, hu=hu, spacing=spacing)
            rec = guard.assess(whole_slice_descriptor(rs))
            far = ", ".join(f["feature"] for f in rec["furthest"])
            verdict = "in domain" if rec["in_domain"] else "FLAGGED"
            print(
                f"{folder.name}: score/threshold {rec['score'] / rec['threshold']:.2f} "
                f"({verdict}); furthest: {far}"
            )
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
