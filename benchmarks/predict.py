"""Latency of `lungslice predict` on one ~300-slice study, per stage, against model-only.

Renders the phantom of a real LIDC-IDRI scan at full size (LIDC-IDRI-0019: 305
slices of 512 x 512, 1.25 mm apart -> ~380 slices at 1 mm), then times the whole
predict path (index -> load -> HU -> 1 mm -> features -> head -> aggregation ->
heat maps -> report.html -> key_images.dcm -> result.json) and, in the same
run, the backbone alone on random inputs of the same count and shape. Medians of
``--repeats`` alternating runs; the machine is shared, so read the ratio.

Without ``--model`` the head is a random logistic head of the right width: the
speed of predict does not depend on the head's weights.

Usage::

    .venv/bin/python benchmarks/predict.py [--patient LIDC-IDRI-0019] [--repeats 3] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungslice.features.config import FeatureConfig
from lungslice.features.extract import _config_record, make_runner
from lungslice.features.inputs import input_size
from lungslice.features.runtime import tune_allocator
from lungslice.lidc.labels import LabelRule
from lungslice.model.aggregate import AggregateConfig
from lungslice.model.bundle import save_bundle
from lungslice.model.heads import LogisticHead
from lungslice.phantom import PhantomConfig, synthesize
from lungslice.prediction import PredictConfig, Predictor


def random_bundle(path: Path, seed: int = 0) -> Path:
    """A bundle with the default features and a random logistic head."""
    config = FeatureConfig()
    runner = make_runner(config)
    d = runner.backbone.feature_dim
    rng = np.random.default_rng(seed)
    head = LogisticHead(
        {"C": 1.0},
        np.zeros(d, np.float32),
        np.ones(d, np.float32),
        rng.normal(0.0, 0.05, size=(3, d)).astype(np.float32),
        np.array([2.0, 0.0, 0.0], np.float32),
    )
    save_bundle(
        path,
        head,
        feature_config=_config_record(config, runner),
        label_rule=LabelRule(),
        aggregate_config=AggregateConfig(),
        training_summary={"note": "random head for benchmarking"},
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patient", default="LIDC-IDRI-0019")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(os.cpu_count() or 1)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        (series,) = synthesize(root / "data", [args.patient], PhantomConfig(seed=0))
        print(
            f"phantom {args.patient}: {series.n_slices} slices written in "
            f"{time.perf_counter() - t:.1f} s"
        )
        model = args.model or random_bundle(root / "model")
        t = time.perf_counter()
        predictor = Predictor(model)
        print(f"model + backbone load: {time.perf_counter() - t:.2f} s (once per process)")
        study = root / "data" / "LIDC-IDRI" / args.patient
        config = predictor.feature_config
        size = input_size(config.inputs, predictor.runner.backbone.data_config)
        totals, models, stages = [], [], []
        n = 0
        for r in range(args.repeats):
            t = time.perf_counter()
            (pred,) = predictor.predict_study(study, root / f"out{r}", PredictConfig())
            totals.append(time.perf_counter() - t)
            stages.append(pred.result["timings_s"])
            n = pred.resampled.n_slices
            x = torch.randn(config.batch_size, 3, size, size)
            t = time.perf_counter()
            for start in range(0, n, config.batch_size):
                predictor.runner(x[: min(config.batch_size, n - start)])
            models.append(time.perf_counter() - t)
        total, model_only = statistics.median(totals), statistics.median(models)
        print(
            f"study: {pred.resampled.source.n_slices} original slices -> {n} slices at 1 mm, "
            f"backbone {config.backbone} {config.precision} ({predictor.runner.layout}), "
            f"{size} px, batch {config.batch_size}"
        )
        print("median seconds per stage:")
        for key in stages[0]:
            print(f"  {key:<11} {statistics.median(s[key] for s in stages):7.3f}")
        print(
            f"end-to-end predict: {total:.2f} s ({n / total:.0f} slices/s)  runs: "
            + ", ".join(f"{v:.2f}" for v in totals)
        )
        print(f"model only, same slices: {model_only:.2f} s ({n / model_only:.0f} slices/s)")
        print(f"ratio model-only / end-to-end time: {model_only / total:.2f}")


if __name__ == "__main__":
    main()
