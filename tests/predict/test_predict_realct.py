"""A phantom-trained candidate bundle on real CT, through the CLI: the guard fires everywhere.

Issue 12: a bundle trained on the phantom gave p(malignant) = 1.00 on a real
scan and nothing said that the scan looked nothing like the training data.
Here a user's commands (``lungslice candidates extract``, ``candidates
train``, ``predict``) run on eight phantom patients and then on each real GE
series of ``../shared/realct``; ``result.json``, the HTML report, the KOS and
the CLI summary must all say "outside the training domain" and mark the
probabilities as not calibrated for the input. Skipped when
``../shared/realct`` is absent.

The bundle is a candidate bundle: the session's whole-slice ``pipeline``
fixture (three patients) carries no domain guard (whole-slice bundles have
none, and a candidate bundle needs :data:`MIN_DOMAIN_STUDIES` training
studies to fix its threshold on held-out folds).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.model.candidate_bundle import MIN_DOMAIN_STUDIES
from lungslice.model.domain import OUT_OF_DOMAIN_MESSAGE
from lungslice.report.kos import TITLE as KOS_TITLE
from tests.helpers import REALCT, REALCT_NAMES, unpack_realct

pytestmark = [
    pytest.mark.realct,
    pytest.mark.slow,
    pytest.mark.skipif(not REALCT.is_dir(), reason=f"{REALCT} is absent"),
]

#: Candidates kept per training series: enough for a classifier, few enough to be quick.
MAX_CAND = 60


def _run(runner: CliRunner, *args: str) -> str:
    r = runner.invoke(app, list(args), env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A candidate bundle with a domain guard, trained on 8 phantom slabs as a user would."""
    from lungslice.lidc.db import read_database
    from lungslice.lidc.labels import LabelRule, label_scans, write_labels
    from lungslice.phantom import PhantomConfig, select_patients, synthesize

    root = tmp_path_factory.mktemp("realct_bundle")
    ids = select_patients(read_database(), MIN_DOMAIN_STUDIES, seed=0)
    scans = read_database(patient_ids=ids)
    synthesize(root / "data", ids, PhantomConfig(seed=1, matrix=256, z_margin_mm=8.0), scans=scans)
    rule = LabelRule()
    slices, nodules = label_scans(scans, rule=rule)
    write_labels(root / "labels", slices, nodules, rule=rule, source="pylidc")
    runner = CliRunner()
    data, work = str(root / "data"), str(root / "work")
    _run(runner, "candidates", "extract", data, "--out", work, "--max-candidates", str(MAX_CAND))
    _run(
        runner,
        *("candidates", "train", work, str(root / "labels"), "--out", str(root / "model")),
        *("--kind", "logistic", "--c", "0.01", "--folds", "0"),
    )
    manifest = json.loads((root / "model" / "model.json").read_text())
    assert manifest["domain"], manifest["training"]["domain"]  # the guard is in the bundle
    return root / "model"


@pytest.mark.parametrize("name", REALCT_NAMES)
def test_predict_on_real_ct_says_outside_the_training_domain(
    bundle: Path, name: str, tmp_path: Path
) -> None:
    series = unpack_realct(name, tmp_path / "in")
    out = tmp_path / "out"
    said = _run(CliRunner(), "predict", str(series), "--model", str(bundle), "--out", str(out))

    result = json.loads((out / "result.json").read_text())
    domain = result["domain"]
    assert domain["in_domain"] is False, domain
    assert domain["message"] == OUT_OF_DOMAIN_MESSAGE
    assert domain["score"] > domain["threshold"] > 0
    # what gives real CT away: its noise texture, named among the furthest features
    assert "noise_anisotropy" in {f["feature"] for f in domain["furthest"]}
    # the probabilities are still reported, marked as not calibrated for this input
    assert result["scores"]["calibrated_for_input"] is False
    assert 0.0 <= result["scores"]["p_any_nodule"] <= 1.0

    html = " ".join((out / "report.html").read_text().split())
    banner = re.search(r"<div class='ood'>(.*?)</div>", html)
    assert banner is not None, "no out-of-domain banner in report.html"
    assert "Outside the training domain" in banner.group(1)
    assert OUT_OF_DOMAIN_MESSAGE in banner.group(1)
    assert "uncalibrated for this input" in banner.group(1)
    assert html.index("class='ood'") < html.index("class='scores'")  # above the scores

    uid = result["study"]["series_uid"]
    assert f"warning: series {uid}: {OUT_OF_DOMAIN_MESSAGE}" in said
    assert "the probabilities are uncalibrated for this input" in said
    assert "furthest from the training scans: noise_anisotropy" in said

    kos = pydicom.dcmread(out / "key_images.dcm")
    texts = [str(i.TextValue) for i in kos.ContentSequence if i.ValueType == "TEXT"]
    (title,) = [t.split("\n")[0] for t in texts if t.startswith(KOS_TITLE)]
    assert OUT_OF_DOMAIN_MESSAGE in title
