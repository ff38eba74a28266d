"""A phantom-trained candidate model on real CT: LIDC nodules inserted into the real GE hosts.

For each series in ``../shared/realct`` (three GE scanners and protocols) and
each of ``--sets`` nodule sets (LIDC patients, inserted with different seeds by
``lungslice synth --into``), predicts with ``--model`` and reports per host:

- the domain guard's verdict and score (a phantom-trained bundle should say
  "outside the training domain");
- nodules found among the top-5 findings (the finding's centre within the
  inserted nodule's radius + 3 mm), and among all findings;
- findings on no inserted nodule with p(nodule) >= 0.5 per scan (false
  candidates from the real vessels and airways);
- the same for the host without insertions (every finding is false);
- slice ROC-AUC (p(nodule) of each slice against the slices the inserted
  nodules occupy, ``slices.parquet``), pooled over the inserted scans.

Totals come with 95 % bootstrap CIs from a two-level resampling: hosts with
replacement, then each drawn host's nodule sets with replacement (``--boot``
replicates, seeded), so the CIs carry the host-to-host spread, not only the
nodule-to-nodule one.

``--host DIR`` (repeatable) adds other host series, e.g. the demo's held-out
phantom patients: in-domain scans, to check that inserted nodules do not make
the guard fire on them.

Usage::

    .venv/bin/python benchmarks/realct_inserted.py --model demo-output/model \
        [--sets 3] [--host demo-output/data/LIDC-IDRI/LIDC-IDRI-0161 ...] [--no-realct] \
        [--out /tmp/realct-inserted]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.model.metrics import binary_auc
from lungslice.phantom.insert import InsertConfig, insert_nodules
from lungslice.prediction import PredictConfig, Predictor

REALCT = Path(__file__).resolve().parents[1] / ".." / "shared" / "realct"
PATIENT_SETS = (
    "LIDC-IDRI-0078",
    "LIDC-IDRI-0001,LIDC-IDRI-0171",
    "LIDC-IDRI-0068,LIDC-IDRI-0130",
)


def unpack(archive: Path, dest: Path) -> Path:
    """The folder of ``.dcm`` files inside ``archive`` (unpacked once; a folder: inside it)."""
    target = archive if archive.is_dir() else dest / archive.name.removesuffix(".tar.xz")
    if not target.is_dir():
        target.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return next(p.parent for p in sorted(target.rglob("*.dcm")))


def score(result: dict[str, Any], nodules: pd.DataFrame) -> dict[str, Any]:
    """Found@5, found@all and false findings (p >= 0.5) of one prediction."""
    found5, found_all = 0, 0
    cands = result["candidates"]
    on_nodule = np.zeros(len(cands), dtype=bool)
    sx, sy = result["study"]["pixel_spacing_mm"]
    for n in nodules.itertuples():
        hit = [
            i
            for i, c in enumerate(cands)
            if np.hypot((c["row"] - n.centre_row) * sx, (c["column"] - n.centre_col) * sy)
            <= n.radius_mm + 3.0
            and abs(c["z_mm"] - n.centre_z_mm) <= n.radius_mm + 3.0
        ]
        on_nodule[hit] = True
        found5 += bool(hit and min(hit) < 5)
        found_all += bool(hit)
    false = sum(
        1 for c, on in zip(cands, on_nodule, strict=True) if not on and c["p_nodule"] >= 0.5
    )
    return {
        "nodules": len(nodules),
        "found@5": found5,
        "found": found_all,
        "false_p>=0.5": false,
        "findings": len(cands),
        "in_domain": result["domain"]["in_domain"],
        "domain_score": result["domain"]["score"],
        "domain_threshold": result["domain"]["threshold"],
        "p_any_nodule": result["scores"]["p_any_nodule"],
    }


def slice_scores(result: dict[str, Any], labels: pd.DataFrame | None) -> dict[str, Any]:
    """Per-slice p(nodule) and truth (a slice an inserted nodule occupies), matched by z."""
    z = np.array([s["z_mm"] for s in result["slices"]], dtype=np.float64)
    p = np.array([1.0 - s["p_non_nodule"] for s in result["slices"]], dtype=np.float64)
    y = np.zeros(z.size, dtype=bool)
    if labels is not None and len(labels):
        lz = labels["z_mm"].to_numpy(np.float64)
        nearest = np.abs(z[:, None] - lz[None, :]).argmin(axis=1)
        y = (labels["label"].to_numpy() != "non-nodule")[nearest]
    auc = binary_auc(y.astype(int), p) if 0 < y.sum() < y.size else float("nan")
    return {"slice_auc": auc, "slice_y": y, "slice_p": p}


def _totals(t: pd.DataFrame) -> dict[str, float]:
    ins = t[t["set"] != "none"]
    plain = t[t["set"] == "none"]
    y = np.concatenate(list(ins["slice_y"])) if len(ins) else np.zeros(0, bool)
    p = np.concatenate(list(ins["slice_p"])) if len(ins) else np.zeros(0)
    n = float(ins["nodules"].sum())
    return {
        "slice ROC-AUC (inserted scans, pooled)": (
            binary_auc(y.astype(int), p) if 0 < y.sum() < y.size else float("nan")
        ),
        "nodule recall@5": float(ins["found@5"].sum()) / n if n else float("nan"),
        "nodule recall (any finding)": float(ins["found"].sum()) / n if n else float("nan"),
        "false findings p>=0.5 per scan (inserted)": float(ins["false_p>=0.5"].mean()),
        "false findings p>=0.5 per scan (hosts alone)": float(plain["false_p>=0.5"].mean()),
    }


def totals_with_ci(
    table: pd.DataFrame, n_boot: int, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Totals with 95 % percentile CIs: hosts resampled, then each host's rows."""
    point = _totals(table)
    hosts = sorted(table["host"].unique())
    by_host = {h: table[table["host"] == h] for h in hosts}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        parts = []
        for h in rng.choice(hosts, size=len(hosts), replace=True):
            rows = by_host[h]
            ins = rows[rows["set"] != "none"]
            plain = rows[rows["set"] == "none"]
            if len(ins):
                ins = ins.iloc[rng.integers(0, len(ins), len(ins))]
            parts += [plain, ins]
        rep = _totals(pd.concat(parts))
        for k, v in rep.items():
            if np.isfinite(v):
                samples[k].append(v)
    out = {}
    for k, v in point.items():
        arr = np.asarray(samples[k])
        lo, hi = (np.quantile(arr, 0.025), np.quantile(arr, 0.975)) if arr.size else (np.nan,) * 2
        out[k] = (v, float(lo), float(hi))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sets", type=int, default=3, help="nodule sets per host")
    parser.add_argument("--out", type=Path, default=Path("/tmp/realct-inserted"))
    parser.add_argument(
        "--host", type=Path, action="append", default=[], help="another host series folder"
    )
    parser.add_argument("--no-realct", action="store_true", help="only the --host series")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    args = parser.parse_args(argv)
    hosts: list[Path] = [] if args.no_realct else sorted(REALCT.glob("*.tar.xz"))
    hosts += args.host
    if not hosts:
        print(f"{REALCT} is absent and no --host given: nothing to measure")
        return 1
    predictor = Predictor(args.model)
    config = PredictConfig(write_report=False, write_key_images=False)
    rows = []
    for archive in hosts:
        host = unpack(archive, args.out / "hosts")
        name = archive.name.removesuffix(".tar.xz")
        (plain,) = predictor.predict_study(host, None, config)
        rows.append(
            {
                "host": name,
                "set": "none",
                **score(plain.result, pd.DataFrame()),
                **slice_scores(plain.result, None),
            }
        )
        for k, patients in enumerate(PATIENT_SETS[: args.sets]):
            out = args.out / name / f"set{k}"
            if not (out / "insertion.json").is_file():
                insert_nodules(host, patients.split(","), out, config=InsertConfig(), seed=k)
            nodules = pd.read_parquet(out / "nodules.parquet")
            (pred,) = predictor.predict_study(out / "dicom", None, config)
            labels = pd.read_parquet(out / "slices.parquet")
            rows.append(
                {
                    "host": name,
                    "set": patients,
                    **score(pred.result, nodules),
                    **slice_scores(pred.result, labels),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k[:6] != "slice_"}), flush=True)
    table = pd.DataFrame(rows)
    cmd = "python benchmarks/realct_inserted.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    print(f"\n{cmd}\n")
    print(table.drop(columns=["slice_y", "slice_p"]).to_string(index=False))
    ins = table[table["set"] != "none"]
    print(
        f"\ninserted nodules found in the top 5: {ins['found@5'].sum()} of {ins['nodules'].sum()}; "
        f"anywhere: {ins['found'].sum()}; false findings p>=0.5 per scan: "
        f"{table['false_p>=0.5'].mean():.1f}; outside the domain: "
        f"{int((table['in_domain'] == False).sum())} of {len(table)} predictions"  # noqa: E712
    )
    print(f"\nwith 95 % CIs (hosts, then nodule sets within a host, {args.boot} replicates):")
    for name, (value, lo, hi) in totals_with_ci(table, args.boot).items():
        print(f"  {name}: {value:.3f} [{lo:.3f}, {hi:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
