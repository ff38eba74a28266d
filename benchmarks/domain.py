"""Out-of-domain guard and calibration, measured on a phantom cohort and ../shared/realct.

Usage (from the repository root)::

    .venv/bin/python benchmarks/domain.py                       # everything, figures to docs/images
    .venv/bin/python benchmarks/domain.py --n 16 --matrix 256   # the defaults
    .venv/bin/python benchmarks/domain.py --cache /tmp/domain.npz   # reuse rendered descriptors

What it does, all in one run:

1. Renders ``--n`` stratified LIDC-IDRI phantom patients (whole scans,
   ``--matrix`` pixels, kernel "auto" as the demo does) plus ``--n-extra``
   further patients in three versions: the default rendering (held-out
   controls), a noisier LUNG-kernel rendering (noise 120 HU) and a smooth,
   low-noise SOFT rendering (noise 4 HU). Every phantom goes through what the
   pipeline does to a study: HU with out-of-field padding set to air,
   resampled to 1 mm slices (``lungslice.dicom.resample.resample``).
2. Loads the three real GE series of ../shared/realct (``load_series`` +
   ``resample``), and a non-chest input: the PET-CT series (it runs from the
   lower chest up through the neck to the head) cropped to its slices above
   the lungs, plus a phantom whose lung fields
   are filled with soft tissue (a chest-shaped non-lung volume).
3. Computes :func:`lungslice.model.domain.study_descriptor` of each, then for
   each method (Mahalanobis, Mahalanobis on PCA 90 %, k-NN k=3):
   nested patient-grouped CV on the in-domain cohort (outer 4 folds: fit on
   3/4 with the inner-CV threshold, score the held-out 1/4) -> held-out pass
   rate; a model fitted on the whole cohort -> scores of the extra phantoms,
   realct and the non-chest inputs; and a model fitted on the cohort's SOFT
   and STANDARD scans only -> scores of its LUNG-kernel scans.
4. Calibration, on out-of-fold predictions of a real medical data set that
   ships with scikit-learn (Wisconsin breast cancer, 569 patients):
   Gaussian naive Bayes, whose probabilities saturate, 5-fold CV; ECE with a
   CI over patients, saturated rate, before and after temperature and Platt
   scaling fitted on the other folds (:func:`cross_calibrate`).

Nothing here is asserted; the printed numbers go to docs/domain.md.
"""

from __future__ import annotations

import argparse
import logging
import tarfile
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from lungslice.dicom.resample import resample
from lungslice.dicom.volume import CTVolume, load_series
from lungslice.lidc.db import read_database
from lungslice.model.calibration import (
    cross_calibrate,
    ece_bootstrap,
    plot_reliability,
    saturation_rate,
)
from lungslice.model.domain import DESCRIPTOR_NAMES, DomainModel, grouped_folds, study_descriptor
from lungslice.model.metrics import format_figure
from lungslice.phantom import PhantomConfig, render, select_patients
from lungslice.phantom.calibrate import body_mask, lung_field

REPO = Path(__file__).resolve().parents[1]
REALCT = REPO / ".." / "shared" / "realct"
REAL_NAMES = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm", "chest-ct-ge-petct-4mm")
METHODS = {
    "mahalanobis": {"method": "mahalanobis"},
    "mahalanobis-pca90": {"method": "mahalanobis", "n_components": 0.9},
    "knn3": {"method": "knn", "n_neighbors": 3},
}


def _volume(hu: np.ndarray, z: np.ndarray, pixel: float, pid: str) -> CTVolume:
    hu = hu.astype(np.float32)
    hu[hu < -1500] = -1000.0  # load_series sets out-of-field padding to air
    n = hu.shape[0]
    return CTVolume(
        hu=hu,
        spacing=(float(np.median(np.diff(z))), pixel, pixel),
        z_positions=np.asarray(z, dtype=np.float64),
        sop_instance_uids=tuple(f"{pid}.{i}" for i in range(n)),
        instance_numbers=(None,) * n,
        series_uid=pid,
        study_uid=pid,
        patient_id=pid,
    )


def _descriptor_of(vol: CTVolume) -> tuple[np.ndarray, float]:
    r = resample(vol, 1.0)
    t = time.perf_counter()
    d = study_descriptor(r.hu, r.spacing)
    return d, time.perf_counter() - t


def _fill_lungs(vol: CTVolume, seed: int) -> CTVolume:
    """The same volume with every lung field filled with noisy soft tissue (no lung left)."""
    hu = vol.hu.copy()
    rng = np.random.default_rng(seed)
    for k in range(hu.shape[0]):
        lf = lung_field(hu[k])
        hu[k][lf] = 45.0 + rng.normal(0.0, 15.0, int(lf.sum()))
    return CTVolume(**{**vol.__dict__, "hu": hu})


def _crop_off_lungs(vol: CTVolume) -> tuple[CTVolume, str]:
    """The longer end of the series outside its main lung run (slices with no lung field)."""
    share = []
    for k in range(vol.n_slices):
        body = body_mask(vol.hu[k])
        share.append(lung_field(vol.hu[k], body).sum() / max(int(body.sum()), 1))
    lungy = np.asarray(share) >= 0.01
    best, start, run = (0, 0), None, 0
    for k, v in enumerate([*lungy.tolist(), False]):
        if v and start is None:
            start = k
        if not v and start is not None:
            if k - start > run:
                best, run = (start, k), k - start
            start = None
    lo, hi = best
    sl, where = (
        (slice(0, lo), "inferior") if lo >= vol.n_slices - hi else (slice(hi, None), "superior")
    )
    n = len(range(vol.n_slices)[sl])
    if n < 3:
        raise SystemExit(f"{vol.series_uid}: fewer than 3 slices outside the lungs")
    cropped = CTVolume(
        **{
            **vol.__dict__,
            "hu": vol.hu[sl],
            "z_positions": vol.z_positions[sl],
            "sop_instance_uids": vol.sop_instance_uids[sl],
            "instance_numbers": vol.instance_numbers[sl],
        }
    )
    return cropped, f"{n} slices {where} of the lungs"


def collect(n: int, n_extra: int, matrix: int, seed: int) -> dict[str, object]:
    """Render, load and describe every study (the slow part)."""
    scans = read_database()
    ids = select_patients(scans, n + n_extra, seed=seed)
    main_ids, extra_ids = ids[:n], ids[n:]
    by_pid = {s.patient_id: s for s in scans if s.patient_id in set(ids)}
    rows: dict[str, list] = {"name": [], "group": [], "patient": [], "kernel": [], "x": []}
    times = []

    def add(name: str, group: str, pid: str, kernel: str, vol: CTVolume) -> None:
        d, dt = _descriptor_of(vol)
        times.append((name, vol.hu.shape, dt))
        for key, value in zip(
            ("name", "group", "patient", "kernel", "x"), (name, group, pid, kernel, d), strict=True
        ):
            rows[key].append(value)
        print(f"  {group:12s} {name:36s} {kernel:9s} descriptor {dt:.2f} s", flush=True)

    variants = {
        "extra": PhantomConfig(seed=seed, matrix=matrix),
        "noisy-lung": PhantomConfig(seed=seed, matrix=matrix, kernel="lung", noise_hu=120.0),
        "smooth-soft": PhantomConfig(seed=seed, matrix=matrix, kernel="soft", noise_hu=4.0),
    }
    t0 = time.perf_counter()
    for pid in main_ids:
        r = render(by_pid[pid], PhantomConfig(seed=seed, matrix=matrix))
        add(
            pid, "in-domain", pid, r.kernel.name, _volume(r.hu, r.z_positions, r.pixel_spacing, pid)
        )
    filled = None
    for pid in extra_ids:
        for group, cfg in variants.items():
            r = render(by_pid[pid], cfg)
            vol = _volume(r.hu, r.z_positions, r.pixel_spacing, pid)
            add(f"{pid}", group, pid, r.kernel.name, vol)
            if group == "extra" and filled is None:
                filled = _fill_lungs(vol, seed)
                add(f"{pid} lungs filled", "non-chest", pid, r.kernel.name, filled)
    print(f"phantom rendering + descriptors: {time.perf_counter() - t0:.0f} s")
    if REALCT.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            for name in REAL_NAMES:
                with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
                    tar.extractall(tmp, filter="data")
                vol = load_series(Path(tmp) / name)
                add(name, "realct", name, str(vol.info.get("kernel", "?")), vol)
                if name == "chest-ct-ge-petct-4mm":
                    crop, what = _crop_off_lungs(vol)
                    add(
                        f"{name[:-4]}: {what}",
                        "non-chest",
                        name,
                        str(vol.info.get("kernel", "?")),
                        crop,
                    )
    else:
        print(f"{REALCT} is absent: no real series")
    return {
        "name": np.array(rows["name"]),
        "group": np.array(rows["group"]),
        "patient": np.array(rows["patient"]),
        "kernel": np.array(rows["kernel"]),
        "X": np.stack(rows["x"]),
        "times": np.array([t[2] for t in times]),
        "shapes": np.array([t[1] for t in times]),
    }


def evaluate(data: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Print every method's scores; return the default method's score/threshold ratios."""
    X, group, patient, kernel, name = (
        data["X"],
        data["group"],
        data["patient"],
        data["kernel"],
        data["name"],
    )
    ind = group == "in-domain"
    Xi, pi = X[ind], patient[ind]
    outer = grouped_folds(pi, 4, seed=seed + 1)
    ratios: dict[str, np.ndarray] = {}
    print(
        f"\nin-domain cohort: {ind.sum()} phantom studies; threshold = 95 % quantile of held-out "
        "scores (inner 5-fold patient-grouped CV) x 1.1"
    )
    for label, kw in METHODS.items():
        print(f"\n== {label}")
        held = np.empty(ind.sum())
        held_ratio = np.empty(ind.sum())
        for f in range(outer.max() + 1):
            test = outer == f
            m = DomainModel(**kw, seed=seed).fit(Xi[~test], pi[~test], DESCRIPTOR_NAMES)  # type: ignore[arg-type]
            held[test] = m.verdict(Xi[test])
            held_ratio[test] = m.score(Xi[test]) / m.threshold_
        print(
            f"  nested CV, held-out in-domain phantom studies passing: "
            f"{int(held.sum())}/{held.size}"
            f" (score/threshold median {np.median(held_ratio):.2f}, max {held_ratio.max():.2f})"
        )
        m = DomainModel(**kw, seed=seed).fit(Xi, pi, DESCRIPTOR_NAMES)  # type: ignore[arg-type]
        print(
            f"  fitted on all {ind.sum()}: threshold {m.threshold_:.3f}, inner-CV pass rate "
            f"{m.cv_pass_rate_:.3f}"
        )
        rest = ~ind
        s = m.score(X[rest])
        for nm, g, k, sc in zip(name[rest], group[rest], kernel[rest], s, strict=True):
            verdict = "in domain" if sc <= m.threshold_ else "OUTSIDE"
            print(
                f"  {g:12s} {nm:40s} {k:9s} score {sc:9.2f}  /threshold {sc / m.threshold_:7.2f}"
                f"  {verdict}"
            )
        # kernel shift inside the cohort: train without LUNG-kernel scans, score them
        lungk = kernel[ind] == "LUNG"
        if 3 <= (~lungk).sum() and lungk.any():
            mk = DomainModel(**kw, seed=seed).fit(Xi[~lungk], pi[~lungk], DESCRIPTOR_NAMES)  # type: ignore[arg-type]
            sk = mk.score(Xi[lungk]) / mk.threshold_
            print(
                f"  trained on {int((~lungk).sum())} SOFT/STANDARD scans: LUNG-kernel "
                f"scans flagged {int((sk > 1).sum())}/{int(lungk.sum())}, "
                f"score/threshold {np.round(np.sort(sk), 2).tolist()}"
            )
        if label == "mahalanobis":
            ratios = {"held-out in-domain\n(nested CV)": held_ratio}
            for g in ("extra", "noisy-lung", "smooth-soft", "realct", "non-chest"):
                sel = group[rest] == g
                if sel.any():
                    ratios[g] = s[sel] / m.threshold_
            contrib = ((X[rest] - m.mean_) / m.scale_).round(1)
            print("  standardised descriptor of realct / non-chest (largest |z| entries):")
            for nm, g, zrow in zip(name[rest], group[rest], contrib, strict=True):
                if g in ("realct", "non-chest"):
                    top = np.argsort(-np.abs(zrow))[:4]
                    print(
                        f"    {nm:40s} "
                        + ", ".join(f"{DESCRIPTOR_NAMES[i]} {zrow[i]:+.1f}" for i in top)
                    )
    return ratios


def plot_scores(ratios: dict[str, np.ndarray], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    rng = np.random.default_rng(0)
    for i, (label, r) in enumerate(ratios.items()):
        x = i + rng.uniform(-0.15, 0.15, r.size)
        colour = "tab:blue" if i == 0 or label == "extra" else "tab:red"
        ax.scatter(x, np.maximum(r, 1e-2), color=colour, s=22, alpha=0.8)
    ax.axhline(1.0, color="black", lw=1, ls="--", label="threshold (CV 95 % x 1.1)")
    ax.set_xticks(range(len(ratios)), list(ratios), fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("domain score / threshold")
    ax.set_title("Mahalanobis domain score, phantom-trained (> 1: outside the training domain)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def calibration_demo(out: Path, seed: int) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.naive_bayes import GaussianNB

    ds = load_breast_cancer()
    X, y = ds.data, (ds.target == 0).astype(np.int64)  # 1 = malignant
    patients = np.arange(y.size)
    folds = grouped_folds(patients, 5, seed=seed)
    p = np.empty(y.size)
    for f in range(5):
        test = folds == f
        p[test] = GaussianNB().fit(X[~test], y[~test]).predict_proba(X[test])[:, 1]
    print(
        f"\ncalibration: Wisconsin breast cancer (scikit-learn), {y.size} patients, "
        f"{int(y.sum())} malignant; Gaussian naive Bayes, patient 5-fold CV, "
        "out-of-fold p(malignant)"
    )
    after = {m: cross_calibrate(p, y, folds, m) for m in ("temperature", "platt")}
    for label, q in (("uncalibrated", p), *after.items()):
        ece = ece_bootstrap(y, q, patients, n_boot=500, seed=seed)
        print(
            f"  {label:13s} ECE {format_figure(ece)}  saturated (p<1e-3 or >1-1e-3) "
            f"{saturation_rate(q):.3f}"
        )
    plot_reliability(
        y,
        p,
        after["platt"],
        out / "domain_calibration.png",
        labels=("uncalibrated", "Platt (fitted on the other folds)"),
        title="Gaussian NB on Wisconsin breast cancer, out-of-fold",
    )
    print(f"wrote {out / 'domain_calibration.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="in-domain phantom patients")
    ap.add_argument("--n-extra", type=int, default=4, help="phantom patients for the variants")
    ap.add_argument("--matrix", type=int, default=256, choices=(256, 512))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, help="npz of descriptors: read if present, else written")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO if a.v else logging.WARNING)
    if a.cache and a.cache.is_file():
        data = dict(np.load(a.cache, allow_pickle=False))
        print(f"descriptors from {a.cache}")
    else:
        data = collect(a.n, a.n_extra, a.matrix, a.seed)
        if a.cache:
            np.savez(a.cache, **data)
    t = data["times"]
    big = np.array([s[1] >= 512 for s in data["shapes"]])
    if big.any():
        print(
            "descriptor time on 512 x 512 real series: "
            + ", ".join(
                f"{s[0]} sl. {x:.2f} s" for s, x in zip(data["shapes"][big], t[big], strict=True)
            )
        )
    ratios = evaluate(data, a.seed)
    plot_scores(ratios, a.out / "domain_scores.png")
    calibration_demo(a.out, a.seed)


if __name__ == "__main__":
    main()
