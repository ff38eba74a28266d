"""Start-up of the CLI, side by side with another source tree, in fresh processes.

Runs ``lungslice --help``, ``lungslice show --help`` and ``lungslice show
SERIES`` with this tree's ``src`` and with ``--before`` (e.g. a worktree of an
earlier commit: ``git worktree add /tmp/before COMMIT``), alternated, and
prints the medians. The machine is shared: the load average is printed.

Usage::

    .venv/bin/python benchmarks/startup.py --before /tmp/before/src --series DIR [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

CODE = (
    "import sys; sys.argv = ['lungslice', *sys.argv[1:]]; "
    "from lungslice.cli import app; app(prog_name='lungslice')"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="another tree's src folder")
    parser.add_argument("--series", type=Path, required=True, help="a CT series for `show`")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("load average before:", " ".join(f"{v:.1f}" for v in os.getloadavg()))
    trees = {"before": args.before, "after": Path(__file__).resolve().parents[1] / "src"}
    cases = {
        "--help": ["--help"],
        "show --help": ["show", "--help"],
        "show SERIES": ["show", str(args.series)],
    }
    times: dict[tuple[str, str], list[float]] = {(c, t): [] for c in cases for t in trees}
    for _ in range(args.repeats):
        for case, argv in cases.items():
            for tree, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(src)}
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-c", CODE, *argv],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
                times[(case, tree)].append(time.perf_counter() - t0)
    print("load average after:", " ".join(f"{v:.1f}" for v in os.getloadavg()))
    for case in cases:
        before = statistics.median(times[(case, "before")])
        after = statistics.median(times[(case, "after")])
        print(
            f"{case:<12} before {before:5.2f} s  after {after:5.2f} s  (median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
