"""What a user waits for with `lungslice predict` on one study: wall time, peak RSS, stages.

Runs the command a user types (``lungslice predict STUDY --model MODEL --out
OUT``, as ``python -m lungslice``) in a fresh process ``--repeats`` times and
prints, per run and as median with spread (min-max): the wall time, the peak
RSS of the process, the stage times ``result.json`` records (index, load,
resample, features, ...) and their sum, and the rest, ``wall - stages``: the
fixed cost (imports, model and backbone loading, writing out).

Side by side (alternated, same study): the bundle with its frozen TorchScript
feature extractor (``frozen``: predict imports no timm/torchvision) and the same
bundle without it (``timm``: the backbone is built with timm, as bundles saved
before the extractor was frozen). Whichever the given bundle lacks is made as a
copy (:func:`lungslice.model.bundle.freeze_bundle`, or the record stripped).
``--no-compare`` runs the given bundle alone.

A probe process (once per repeat and bundle, alternating with the runs) splits
the fixed cost: importing torch; importing lungslice's CLI and prediction
modules (with what they import: pandas, scipy, scikit-learn...);
``Predictor(model)`` (bundle, backbone: timm's import and construction, or the
TorchScript file); and the backbone's first call on a batch against its second
(one-off kernel set-up).

``--variant NAME:VAR=VALUE[,VAR=VALUE]`` adds runs of the first bundle with extra
environment variables, alternated with the others (e.g. ``threads1:OMP_NUM_THREADS=1``).

Without ``--study`` the phantom of a real LIDC-IDRI scan is rendered at full
size (LIDC-IDRI-0019: 305 slices of 512 x 512), and without ``--model`` a
whole-slice bundle with a random logistic head is made (predict's speed does
not depend on the head's weights). The machine is shared: the load average
(``uptime``) is printed before, with every run and after.

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
    study = record.get("study", {})
    slices = f"{study.get('n_original_slices')} ({study.get('n_resampled_slices')} resampled)"
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
    from lungslice.cli import app  # noqa: F401
    from lungslice.features.inputs import input_size
    from lungslice.features.runtime import tune_allocator
    from lungslice.prediction import Predictor

    t2 = time.perf_counter()
    tune_allocator()
    predictor = Predictor(model)
    t3 = time.perf_counter()
    config = predictor.feature_config
    runner = predictor.runner
    candidates = getattr(predictor, "candidates", None)
    if candidates is not None:  # candidate patches, in batches of 64 (candidate_features)
        batch, size = 64, int(candidates.config.patches.size)
    else:
        batch, size = config.batch_size, input_size(config.inputs, runner.backbone.data_config)
    x = torch.randn(batch, 3, size, size)
    t4 = time.perf_counter()
    runner(x)
    t5 = time.perf_counter()
    runner(x)
    t6 = time.perf_counter()
    print(
        json.dumps(
            {
                "import torch": t1 - t0,
                "import lungslice (cli, prediction)": t2 - t1,
                "Predictor(model)": t3 - t2,
                "first batch": t5 - t4,
                "second batch": t6 - t5,
                "batch": f"{batch} x {size} px",
                "threads": torch.get_num_threads(),
                "backbone": f"{type(runner.backbone).__name__} ({runner.layout})",
                "imported": [
                    m for m in ("timm", "torchvision", "torch._dynamo") if m in sys.modules
                ],
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


def bundle_pair(model: Path, root: Path) -> tuple[Path, Path]:
    """``(frozen, timm)``: ``model`` with and without its frozen feature extractor."""
    from lungslice.model.bundle import freeze_bundle, read_manifest

    manifest = read_manifest(model)
    record = manifest.get("frozen_backbone")
    copy = root / "bundle-copy"
    shutil.copytree(model, copy)
    if record is None:  # a bundle saved before: freeze a copy
        from lungslice.prediction import Predictor

        if freeze_bundle(copy, Predictor(copy).feature_config) is None:
            raise SystemExit(f"{model}: its backbone could not be frozen (see the log)")
        return copy, model
    manifest.pop("frozen_backbone")
    del manifest["files"][record["file"]]
    (copy / record["file"]).unlink()
    (copy / "model.json").write_text(json.dumps(manifest, indent=1))
    return model, copy


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {_load()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, default=None, help="a study folder")
    parser.add_argument("--model", type=Path, default=None, help="a model bundle")
    parser.add_argument("--patient", default="LIDC-IDRI-0019", help="phantom without --study")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE")
    parser.add_argument("--no-compare", action="store_true", help="only the given bundle")
    parser.add_argument("--no-probe", action="store_true", help="skip the fixed-cost probe")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.model)
        return
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"uptime before: {_uptime()} ({os.cpu_count()} cores)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = args.study
        if study is None:
            from lungslice.phantom import PhantomConfig, synthesize

            synthesize(root / "data", [args.patient], PhantomConfig(seed=0))
            study = root / "data" / "LIDC-IDRI" / args.patient
        model = args.model or random_bundle(root / "model")
        if args.no_compare:
            bundles = {"given": model}
        else:
            frozen, timm = bundle_pair(model, root)
            bundles = {"frozen": frozen, "timm": timm}
        first = next(iter(bundles.values()))
        variants: list[tuple[str, Path, dict[str, str]]] = [
            (name, path, {}) for name, path in bundles.items()
        ]
        variants += [(n, first, env) for n, env in (parse_variant(v) for v in args.variant)]
        names = [name for name, _, _ in variants]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        probes: dict[str, list[dict[str, Any]]] = {name: [] for name in bundles}
        for r in range(args.repeats):
            for name, path, env in variants:
                run = run_predict(study, path, root / f"out-{name}", env)
                run["load"] = _load()
                runs[name].append(run)
                print(
                    f"run {r} {name:>10}: wall {run['wall']:6.2f} s, stages {run['stage_sum']:6.2f}"
                    f" s, fixed {run['wall'] - run['stage_sum']:5.2f} s, peak RSS "
                    f"{run['rss_gib']:.2f} GiB (load {run['load']})",
                    flush=True,
                )
            if not args.no_probe:
                for name, path in bundles.items():
                    probes[name].append({**run_probe(path, {}), "load": _load()})
        one = runs[names[0]][0]
        print(f"\nstudy {study}: {one['slices']} slices in result.json; model {model}")
        for name, path in bundles.items():
            print(f"  {name}: {path}")
        print(
            f"\nmedian [min-max] of {args.repeats} runs (seconds)"
            + "".join(f"{n:>22}" for n in names)
        )

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):7.2f} [{min(values):5.2f}-{max(values):5.2f}]"

        def row(label: str, key: Any) -> None:
            print(
                f"  {label:<30}" + "".join(f"{cell([key(x) for x in runs[n]]):>22}" for n in names)
            )

        row("wall (what the user waits)", lambda x: x["wall"])
        row("stages in result.json (sum)", lambda x: x["stage_sum"])
        row("fixed cost (wall - stages)", lambda x: x["wall"] - x["stage_sum"])
        row("peak RSS (GiB)", lambda x: x["rss_gib"])
        for key in one["stages"]:
            row(f"  {key}", lambda x, k=key: x["stages"].get(k, 0.0))
        for name, found in probes.items():
            if not found:
                continue
            print(f"\nfixed cost split ({name}), fresh process, median of {len(found)} probes:")
            for key, value in found[0].items():
                if isinstance(value, float):
                    values = [p[key] for p in found]
                    print(f"  {key:<36}{cell(values)} s")
            heavy = ", ".join(found[0]["imported"]) or "none of timm, torchvision, torch._dynamo"
            print(
                f"  (batch {found[0]['batch']}, {found[0]['threads']} threads, "
                f"{found[0]['backbone']}; imported: {heavy})"
            )
        print(f"\nuptime after: {_uptime()}")


if __name__ == "__main__":
    main()
