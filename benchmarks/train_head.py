"""Benchmark: training the logistic head on 300,000 x 1,280 features (target <= 60 s, 2 cores).

Features are synthetic but shaped like pooled CNN activations (non-negative,
correlated through a low-rank latent, 94 % / 3 % / 3 % classes). Prints the
final-fit time at one C (what ``train`` pays per fit), the full ``train_head``
with the default 3-point C grid (3 inner folds + refit), and a side-by-side
ratio against scikit-learn's own ``LogisticRegression`` on a subsample (same
objective, same C).

    .venv/bin/python benchmarks/train_head.py            # 300,000 x 1,280
    .venv/bin/python benchmarks/train_head.py --n 50000  # quicker
    .venv/bin/python benchmarks/train_head.py --sklearn-rows 0 --blas-threads 1 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from lungslice.model.heads import HeadConfig, balanced_class_weights, train_head


def make_features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.94, 0.03, 0.03])
    latent = rng.standard_normal((n, 64), dtype=np.float32)
    latent[:, :3] += 1.5 * np.eye(3, dtype=np.float32)[y]
    mix = rng.standard_normal((64, d), dtype=np.float32) / 8
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 50_000):  # chunks: no second full-size temporary
        part = latent[s : s + 50_000] @ mix
        part += rng.standard_normal(part.shape, dtype=np.float32) * 0.5
        X[s : s + 50_000] = np.maximum(part, 0.0)
    groups = np.repeat(np.arange(n // 300 + 1), 300)[:n].astype(str)  # ~300 slices a patient
    return X, y, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument(
        "--sklearn-rows", type=int, default=50_000, help="rows for the comparison (0: skip)"
    )
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument(
        "--blas-threads", type=int, nargs="+", default=[2], help="BLAS threads to time, e.g. 1 2"
    )
    parser.add_argument("--grid", action="store_true", help="also time the 3-point C grid")
    parser.add_argument("--mlp-epochs", type=int, default=0, help="also time the MLP head")
    args = parser.parse_args()

    X, y, groups = make_features(args.n, args.d, seed=0)
    print(f"features {X.shape} float32, classes {np.bincount(y).tolist()}")

    for threads in args.blas_threads:
        with threadpool_limits(limits=threads, user_api="blas"):
            t, c = time.perf_counter(), time.process_time()
            head = train_head(X, y, groups, config=HeadConfig(C_grid=(args.C,)), seed=0)
            t_fit, c_fit = time.perf_counter() - t, time.process_time() - c
        # CPU seconds as well as wall: on a shared machine wall time includes waiting for cores
        print(
            f"lungslice logistic head, one C, {args.n} rows, {threads} BLAS thread(s): "
            f"{t_fit:.1f} s wall, {c_fit:.1f} s CPU "
            f"({head.hyperparameters['n_iter']} L-BFGS iterations), load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
    if args.grid:
        t = time.perf_counter()
        head = train_head(X, y, groups, config=HeadConfig(), seed=0)
        print(
            f"lungslice logistic head, C grid {HeadConfig().C_grid} x 3 inner folds + refit: "
            f"{time.perf_counter() - t:.1f} s (chose C={head.hyperparameters['C']})"
        )

    if args.mlp_epochs:
        cfg = HeadConfig(
            kind="mlp", hidden_grid=(128,), weight_decay_grid=(1e-4,), epochs=args.mlp_epochs
        )
        t, c = time.perf_counter(), time.process_time()
        train_head(X, y, groups, config=cfg, seed=0)
        print(
            f"lungslice MLP head (hidden 128, batch 512), {args.mlp_epochs} epoch(s), {args.n} "
            f"rows: {time.perf_counter() - t:.1f} s wall, {time.process_time() - c:.1f} s CPU"
        )

    m = min(args.sklearn_rows, args.n)
    if m == 0:
        return
    Xm, ym, gm = X[:m], y[:m], groups[:m]
    t = time.perf_counter()
    ours = train_head(Xm, ym, gm, config=HeadConfig(C_grid=(args.C,)), seed=0)
    t_ours = time.perf_counter() - t
    mean, std = Xm.mean(axis=0), Xm.std(axis=0)
    std[std < 1e-6] = 1.0
    t = time.perf_counter()
    Xs = (Xm - mean) / std
    ref = LogisticRegression(C=args.C, max_iter=200, tol=1e-4)
    ref.fit(Xs, ym, sample_weight=balanced_class_weights(ym)[ym])
    t_ref = time.perf_counter() - t
    gap = np.abs(ours.predict_proba(Xm) - ref.predict_proba(Xs)).max()
    print(
        f"side by side on {m} rows: lungslice {t_ours:.1f} s, scikit-learn lbfgs {t_ref:.1f} s "
        f"({ref.n_iter_[0]} iterations), ratio {t_ref / t_ours:.1f}x; max |p diff| {gap:.4f}"
    )


if __name__ == "__main__":
    main()
