"""How the out-of-domain guard behaves with the small training cohorts users have.

Usage (from the repository root)::

    .venv/bin/python benchmarks/domain_cohort.py --data PHANTOM_DIR [--data OTHER_DIR ...]
        [--realct ../shared/realct] [--sizes 9,16,30] [--repeats 40] [--seed 0]

``PHANTOM_DIR`` is any tree of CT series with one series per patient, e.g. the
output of ``lungslice synth --n 40 --out DIR`` or the ``data`` folder that
``benchmarks/quality.py`` writes. Every series is loaded and resampled to 1 mm
as the pipeline does, and :func:`lungslice.model.domain.study_descriptor` is
computed on it (with the candidate path's lung field, as training does). The
real series of ``--realct`` (``*.tar.xz`` archives or folders) are loaded
the same way.

For each training-cohort size ``n`` in ``--sizes`` it draws ``--repeats``
random sets of ``n`` phantom patients, fits the guard on them (its threshold
fixed by its own patient-grouped cross-validation, as a bundle does), and
scores (a) the phantom patients it was not fitted on (the share that passes:
in-domain studies must pass) and (b) each real series (the share of draws that
flag it: a phantom-trained guard must flag real CT). Methods compared side by
side: Mahalanobis and k-NN on all descriptor entries, and on the acquisition
statistics :data:`lungslice.model.domain.GUARD_FEATURES` (the default).

Nothing here is asserted; the printed table goes to docs/domain.md.
"""

from __future__ import annotations

import argparse
import logging
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from lungslice.candidates.lungfield import lung_field
from lungslice.dicom.discover import index_tree
from lungslice.dicom.resample import resample
from lungslice.dicom.volume import load_series
from lungslice.model.domain import DESCRIPTOR_NAMES, GUARD_FEATURES, DomainModel, study_descriptor

log = logging.getLogger("domain_cohort")


def descriptors_of(root: Path) -> dict[str, np.ndarray]:
    """Descriptor of the first CT series of each patient under ``root``."""
    index = index_tree(root, workers=1)
    ct = index.ct_series()
    out: dict[str, np.ndarray] = {}
    for row in ct.itertuples():
        pid = str(row.patient_id)
        if pid in out:
            continue
        vol = load_series(index, series_uid=row.series_uid, config=index.config)
        rs = resample(vol, slice_spacing=1.0)
        lung = lung_field(rs.hu, rs.spacing)
        out[pid] = study_descriptor(rs.hu, rs.spacing, lung)
    return out


def real_descriptors(realct: Path, tmp: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for item in sorted(realct.iterdir()):
        if item.name.endswith(".tar.xz"):
            dest = tmp / item.name.removesuffix(".tar.xz")
            with tarfile.open(item) as tar:
                tar.extractall(dest, filter="data")
            src = dest
        elif item.is_dir():
            src = item
        else:
            continue
        d = descriptors_of(src)
        out[item.name.removesuffix(".tar.xz")] = next(iter(d.values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, action="append", required=True)
    ap.add_argument(
        "--realct",
        type=Path,
        default=Path(__file__).resolve().parents[1] / ".." / "shared" / "realct",
    )
    ap.add_argument("--sizes", default="9,16,30")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    phantom: dict[str, np.ndarray] = {}
    for root in args.data:
        phantom.update(descriptors_of(root))
    with tempfile.TemporaryDirectory() as tmp:
        real = real_descriptors(args.realct.resolve(), Path(tmp))
    print(
        f"descriptors: {len(phantom)} phantom patients, {len(real)} real series "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    D = np.stack(list(phantom.values()))
    R = np.stack(list(real.values()))
    guard = [DESCRIPTOR_NAMES.index(f) for f in GUARD_FEATURES]
    print("\nreal series vs the phantom range (guard features):")
    for j in guard:
        lo, hi = D[:, j].min(), D[:, j].max()
        vals = ", ".join(f"{v:.3g}" for v in R[:, j])
        print(f"  {DESCRIPTOR_NAMES[j]:26s} phantom [{lo:.3g}, {hi:.3g}]  real {vals}")
    methods = {
        "mahalanobis, all entries": ("mahalanobis", None),
        "k-NN, all entries": ("knn", None),
        "mahalanobis, acquisition": ("mahalanobis", GUARD_FEATURES),
        "k-NN, acquisition (default)": ("knn", GUARD_FEATURES),
    }
    rng = np.random.default_rng(args.seed)
    names = list(real)
    print(
        "\n| n train | method | unseen phantoms passing: mean (worst draw) | "
        + " | ".join(f"{n} flagged" for n in names)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(names))
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        if n >= len(D):
            print(f"| {n} | skipped: only {len(D)} phantom patients |")
            continue
        draws = [rng.permutation(len(D)) for _ in range(args.repeats)]
        for label, (method, features) in methods.items():
            passing, flagged = [], []
            for idx in draws:
                tr, te = idx[:n], idx[n:]
                m = DomainModel(method, features=features, seed=args.seed).fit(
                    D[tr], feature_names=DESCRIPTOR_NAMES
                )
                passing.append(float(np.mean(m.verdict(D[te]))))
                flagged.append(~m.verdict(R))
            share = np.mean(flagged, axis=0)
            print(
                f"| {n} | {label} | {np.mean(passing):.3f} ({np.min(passing):.2f}) | "
                + " | ".join(f"{s:.2f}" for s in share)
                + " |"
            )
    print(f"\n{args.repeats} random draws per size; {time.perf_counter() - t0:.0f} s in all")
    print(
        "command: .venv/bin/python benchmarks/domain_cohort.py "
        + " ".join(f"--data {d}" for d in args.data)
        + f" --sizes {args.sizes} --repeats {args.repeats} --seed {args.seed}"
    )


if __name__ == "__main__":
    main()
