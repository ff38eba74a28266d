"""What a user waits for with `lungslice predict` on one study: wall time, peak RSS, stages.

Runs the command a user types (``lungslice predict STUDY --model MODEL --out
OUT``, as ``python -m lungslice``) in a fresh process ``--repeats`` times and
prints, side by side per run and as medians: the wall time, the peak RSS of the process, the stage
times ``result.json`` records (index, load, resample, features, ...) and
their sum, and the rest, ``wall - stages``: the fixed cost (imports, model
and backbone loading, writing out).

A probe process (``--probe``, once per repeat, alternating with the runs)
splits the fixed cost: importing torch, timm (with torchvision), the rest of
lungslice; ``Predictor(model)`` (bundle + backbone construction + weights);
and the backbone's first call on a batch against its second (one-off
kernel set-up).

``--variant NAME:VAR=VALUE[,VAR=VALUE]`` adds runs with extra environment
variables, alternated with the plain runs (e.g. ``threads1:OMP_NUM_THREADS=1``).

Without ``--study`` the phantom of a real LIDC-IDRI scan is rendered at full
size (LIDC-IDRI-0019: 305 slices of 512 x 512), and without ``--model`` a
whole-slice bundle with a random logistic head is made (predict's speed does
not depend on the head's weights). The machine is shared: read the load
average printed with the figures.

Usage::

    .venv/bin/python benchmarks/predict.py --study DIR --model DIR [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The command line a user types (``python -m lungslice`` is the ``lungslice`` script).
LUNGSLICE = [sys.executable, "-m", "lungslice"]


def random_bundle(path: Path, seed: int = 0) -> Path:
    """A bundle with the default features and a random logistic head."""
    import numpy as np

    from lungslice.features.config import FeatureConfig
    from lungslice.features.extract import _config_record, make_runner
    from lungslice.lidc.labels import LabelRule
    from lungslice.model.aggregate import AggregateConfig
    from lungslice.model.bundle import save_bundle
    from lungslice.model.heads import LogisticHead

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


def run_predict(study: Path, model: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `lungslice predict` in a fresh process: wall, peak RSS, result.json stage times."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [*LUNGSLICE, "predict", str(study), "--model", str(model), "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env}
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    (result,) = sorted(out.rglob("result.json"))[:1]
    record = json.loads(result.read_text())
    stages = {str(k): float(v) for k, v in record["timings_s"].items()}
    slices = record.get("study", {}).get("n_slices")
    return {
        "wall": wall,
        "rss_gib": usage.ru_maxrss / 2**20,  # KiB on Linux
        "stages": stages,
        "stage_sum": sum(stages.values()),
        "slices": slices,
    }


def probe(model: Path) -> None:
    """Fresh-process split of the fixed cost; prints one JSON line."""
    t0 = time.perf_counter()
    import torch

    t1 = time.perf_counter()
    import timm  # noqa: F401  (imports torchvision, which imports torch._dynamo)

    t2 = time.perf_counter()
    from lungslice.cli import app  # noqa: F401
    from lungslice.features.inputs import input_size
    from lungslice.features.runtime import tune_allocator
    from lungslice.prediction import Predictor

    t3 = time.perf_counter()
    tune_allocator()
    predictor = Predictor(model)
    t4 = time.perf_counter()
    config = predictor.feature_config
    runner = predictor.runner
    candidates = getattr(predictor, "candidates", None)
    if candidates is not None:  # candidate patches, in batches of 64 (candidate_features)
        batch, size = 64, int(candidates.config.patches.size)
    else:
        batch, size = config.batch_size, input_size(config.inputs, runner.backbone.data_config)
    x = torch.randn(batch, 3, size, size)
    t5 = time.perf_counter()
    runner(x)
    t6 = time.perf_counter()
    runner(x)
    t7 = time.perf_counter()
    print(
        json.dumps(
            {
                "import torch": t1 - t0,
                "import timm+torchvision": t2 - t1,
                "import lungslice (cli, prediction)": t3 - t2,
                "Predictor(model)": t4 - t3,
                "first batch": t6 - t5,
                "second batch": t7 - t6,
                "batch": f"{batch} x {size} px",
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_probe(model: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--probe", "--model", str(model)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"probe failed:\n{done.stderr[-3000:]}")
    parsed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return parsed


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return name, env


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, default=None, help="a study folder")
    parser.add_argument("--model", type=Path, default=None, help="a model bundle")
    parser.add_argument("--patient", default="LIDC-IDRI-0019", help="phantom without --study")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE")
    parser.add_argument("--no-probe", action="store_true", help="skip the fixed-cost probe")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.model)
        return
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"load average (1/5 min): {_load()} on {os.cpu_count()} cores")
    variants = [("default", {}), *(parse_variant(v) for v in args.variant)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = args.study
        if study is None:
            from lungslice.phantom import PhantomConfig, synthesize

            synthesize(root / "data", [args.patient], PhantomConfig(seed=0))
            study = root / "data" / "LIDC-IDRI" / args.patient
        model = args.model or random_bundle(root / "model")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
        probes: list[dict[str, Any]] = []
        for r in range(args.repeats):
            for name, env in variants:
                run = run_predict(study, model, root / f"out-{name}", env)
                run["load"] = _load()
                runs[name].append(run)
                print(
                    f"run {r} {name:>10}: wall {run['wall']:6.2f} s, stages {run['stage_sum']:6.2f}"
                    f" s, fixed {run['wall'] - run['stage_sum']:5.2f} s, peak RSS "
                    f"{run['rss_gib']:.2f} GiB (load {run['load']})",
                    flush=True,
                )
            if not args.no_probe:
                probes.append(run_probe(model, {}))
                probes[-1]["load"] = _load()
        first = runs["default"][0]
        print(f"\nstudy {study}: {first['slices']} slices in result.json; model {model}")
        names = [name for name, _ in variants]
        print(f"\nmedians of {args.repeats} runs (seconds)" + "".join(f"{n:>12}" for n in names))

        def row(label: str, values: list[float], fmt: str = "{:12.2f}") -> None:
            print(f"  {label:<34}" + "".join(fmt.format(v) for v in values))

        med = statistics.median
        row("wall (what the user waits)", [med(x["wall"] for x in runs[n]) for n in names])
        row("stages in result.json (sum)", [med(x["stage_sum"] for x in runs[n]) for n in names])
        row(
            "fixed cost (wall - stages)",
            [med(x["wall"] - x["stage_sum"] for x in runs[n]) for n in names],
        )
        row("peak RSS (GiB)", [med(x["rss_gib"] for x in runs[n]) for n in names])
        for key in first["stages"]:
            row(f"  {key}", [med(x["stages"].get(key, 0.0) for x in runs[n]) for n in names])
        if probes:
            print(f"\nfixed cost split, fresh process, median of {len(probes)} probes:")
            for key, value in probes[0].items():
                if isinstance(value, float) and key != "load":
                    print(f"  {key:<36}{med(p[key] for p in probes):8.2f} s")
            print(f"  (batch {probes[0]['batch']}, {probes[0]['threads']} threads)")
        print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
