"""lungslice serve next to a real Orthanc: STOW-RS in, results back in the same study.

Every test starts its own Orthanc on 127.0.0.1 (free port, auth on, temporary
storage). Timings are printed (pytest -s), never asserted.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from lungslice.serve.fetch import DicomwebFetcher, RestFetcher
from lungslice.serve.local import LocalOrthanc, free_port
from lungslice.serve.orthanc import OrthancDownError, Patience
from lungslice.serve.state import ServeState
from tests.serve.conftest import (
    Bundle,
    CountingFactory,
    finished,
    make_service,
    part10,
    result_series,
    run_until,
    study_copy,
    upload,
)

pytestmark = pytest.mark.slow


def _instance_file(client, series: dict) -> pydicom.Dataset:
    (iid,) = series["Instances"]
    return pydicom.dcmread(io.BytesIO(client.request("GET", f"/instances/{iid}/file")))


def _study_sops(client, study_id: str) -> set[str]:
    return {
        str(i["MainDicomTags"]["SOPInstanceUID"])
        for i in client.get_json(f"/studies/{study_id}/instances")
    }


def _referenced_sops(ds: pydicom.Dataset) -> set[str]:
    refs = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            refs.add(str(elem.value))
    return refs


def test_one_study_by_stow_gets_its_results_in_the_same_study(
    orthanc, bundle: Bundle, shared_predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = orthanc.client()
    study = study_copy(bundle.study, 1)
    t0 = time.monotonic()
    upload(client, study)
    service = make_service(orthanc, bundle, tmp_path / "state", shared_predictor)
    with caplog.at_level(logging.DEBUG, logger="lungslice"):
        run_until(service, finished(1), 60)
    print(f"\nSTOW-RS -> results stored: {time.monotonic() - t0:.1f} s (15 slices, 256^2)")
    (record,) = service.state.studies()
    assert record.status == "processed", record.reason
    assert record.study_uid == study[0].StudyInstanceUID
    (study_id,) = client.studies()
    ours = result_series(client, study_id)
    mid = service.model_id
    by_kind = {s["MainDicomTags"]["SeriesDescription"]: s for s in ours}
    assert set(by_kind) == {
        f"lungslice key images {mid}",
        f"lungslice findings SR {mid}",
        f"lungslice summary {mid}",
    }
    assert all(len(s["Instances"]) == 1 for s in ours)
    ct_sops = {str(ds.SOPInstanceUID) for ds in study}
    assert _study_sops(client, study_id) >= ct_sops
    objects = {kind: _instance_file(client, s) for kind, s in by_kind.items()}
    for kind, ds in objects.items():
        assert ds.StudyInstanceUID == study[0].StudyInstanceUID, kind
        refs = _referenced_sops(ds)
        assert refs, f"{kind} references no image"
        assert refs <= ct_sops, f"{kind}: references outside the study's CT: {refs - ct_sops}"
        assert str(ds.get("PatientName", "")) == ""  # no PHI copied into the results
        if shutil.which("dciodvfy"):
            path = tmp_path / "object.dcm"
            ds.save_as(path)
            check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            out = (check.stdout + check.stderr).splitlines()
            errors = [ln for ln in out if ln.startswith("Error")]
            assert not errors, (kind, errors)
    assert objects[f"lungslice key images {mid}"].Modality == "KO"
    sr_ds = objects[f"lungslice findings SR {mid}"]
    assert sr_ds.Modality == "SR"
    sr_ds.save_as(tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")  # round-trips through highdicom
    assert sr.SOPInstanceUID == sr_ds.SOPInstanceUID
    sc = objects[f"lungslice summary {mid}"]
    assert sc.SOPClassUID.startswith("1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture
    # logs name the study by UID, never the patient
    text = caplog.text
    assert study[0].StudyInstanceUID in text
    assert "Doe" not in text and "Jane" not in text and "19500101" not in text
    assert "SERVE-001" not in text

    # lungslice's own results make the study stable again: no second run
    deadline = time.monotonic() + 20
    seen = 0
    while time.monotonic() < deadline and seen < 2:
        changes = client.changes(0, 1000)["Changes"]
        seen = sum(c["ChangeType"] == "StableStudy" for c in changes)
        time.sleep(0.2)
    assert seen >= 2, "the stored results did not make the study stable again"
    again = make_service(orthanc, bundle, tmp_path / "state", shared_predictor)
    run_until(again, lambda st: True, 10)
    (after,) = again.state.studies()
    assert (after.status, after.attempts) == ("processed", 1)
    assert len(result_series(client, study_id)) == len(ours)
    # a service with a fresh state skips it: the study already holds this model's results
    fresh = make_service(orthanc, bundle, tmp_path / "fresh", shared_predictor)
    run_until(fresh, finished(1), 20)
    (skipped,) = fresh.state.studies()
    assert skipped.status == "skipped"
    assert f"already holds lungslice results of model {service.model_id}" in str(skipped.reason)
    assert len(result_series(client, study_id)) == len(ours)


def test_twenty_studies_at_once_are_each_processed_exactly_once(
    orthanc, bundle: Bundle, tmp_path: Path
) -> None:
    client = orthanc.client()
    studies = [study_copy(bundle.study, n) for n in range(100, 120)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: upload(client, s), studies))
    service = make_service(orthanc, bundle, tmp_path / "state", None, workers=2)
    took = run_until(service, finished(20), 240)
    print(
        f"\n20 studies: {time.monotonic() - t0:.1f} s from the first upload "
        f"({took:.1f} s service run, 2 workers)"
    )
    records = service.state.studies()
    assert len(records) == 20
    assert {r.status for r in records} == {"processed"}, [r.reason for r in records]
    assert all(r.attempts == 1 for r in records)
    assert {r.study_uid for r in records} == {s[0].StudyInstanceUID for s in studies}
    for study_id in client.studies():
        ours = result_series(client, study_id)
        descriptions = sorted(s["MainDicomTags"]["SeriesDescription"] for s in ours)
        assert len(descriptions) == 3 == len(set(descriptions)), descriptions  # one set
        assert all(len(s["Instances"]) == 1 for s in ours)


def test_worker_killed_mid_study_then_restarted_stores_one_set(
    orthanc, bundle: Bundle, shared_predictor, tmp_path: Path
) -> None:
    client = orthanc.client()
    study = study_copy(bundle.study, 2)
    upload(client, study)
    state = tmp_path / "state"
    cmd = [
        str(Path(sys.executable).parent / "lungslice"),
        "serve",
        "--orthanc",
        orthanc.url,
        "--credentials",
        str(orthanc.credentials_path),
        "--model",
        str(bundle.model),
        "--state",
        str(state),
    ]
    worker = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 120
        running = False
        while time.monotonic() < deadline and worker.poll() is None:
            if (state / "serve.sqlite").exists():
                st = ServeState(state)
                running = st.counts()["running"] == 1
                st.close()
                if running:
                    break
            time.sleep(0.02)
        assert running, "the worker never started the study"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    service = make_service(orthanc, bundle, state, shared_predictor)
    run_until(service, finished(1), 60)
    (record,) = service.state.studies()
    assert record.status == "processed", record.reason
    assert record.attempts == 2
    (study_id,) = client.studies()
    ours = result_series(client, study_id)
    descriptions = [s["MainDicomTags"]["SeriesDescription"] for s in ours]
    assert len(descriptions) == len(set(descriptions)) == 3
    assert all(len(s["Instances"]) == 1 for s in ours)


def test_orthanc_stopped_mid_run_and_started_again_the_worker_recovers(
    orthanc, bundle: Bundle, shared_predictor, tmp_path: Path
) -> None:
    client = orthanc.client()
    studies = [study_copy(bundle.study, n) for n in (3, 4, 5)]
    for s in studies:
        upload(client, s)
    service = make_service(orthanc, bundle, tmp_path / "state", shared_predictor)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_until(service, finished(3), 120)
        except BaseException as err:  # the assertion below reports it
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and service.state.counts()["running"] == 0:
        time.sleep(0.02)
    assert service.state.counts()["running"] == 1
    orthanc.stop()
    time.sleep(3.0)  # the worker meets a dead Orthanc: retries, backs off, requeues
    assert thread.is_alive(), errors
    orthanc.start()
    thread.join(150)
    assert not thread.is_alive() and not errors, errors
    records = service.state.studies()
    assert [r.status for r in records] == ["processed"] * 3, [r.reason for r in records]
    for study_id in client.studies():
        ours = result_series(client, study_id)
        descriptions = [s["MainDicomTags"]["SeriesDescription"] for s in ours]
        assert len(descriptions) == len(set(descriptions)) == 3
        assert all(len(s["Instances"]) == 1 for s in ours)


def test_a_cr_study_is_skipped_and_a_corrupt_one_failed_and_the_next_processed(
    orthanc, bundle: Bundle, shared_predictor, tmp_path: Path
) -> None:
    client = orthanc.client()
    cr = study_copy(bundle.study[:1], 6, modality="CR")
    corrupt = study_copy(bundle.study, 7)
    damaged = corrupt[7]
    damaged.PixelData = damaged.PixelData[: len(damaged.PixelData) // 2]  # truncated image
    good = study_copy(bundle.study, 8)
    for s in (cr, corrupt, good):
        upload(client, s)
    factory = CountingFactory(shared_predictor)
    service = make_service(orthanc, bundle, tmp_path / "state", factory)
    run_until(service, finished(3), 90)
    assert factory.calls == 1  # one model per worker, kept for every study
    by_uid = {r.study_uid: r for r in service.state.studies()}
    r_cr = by_uid[cr[0].StudyInstanceUID]
    assert r_cr.status == "skipped"
    assert r_cr.reason == "no CT series (the study holds CR)"
    r_bad = by_uid[corrupt[0].StudyInstanceUID]
    assert r_bad.status == "failed"
    assert r_bad.reason and "<study>" in r_bad.reason  # says where, without the temp path
    print(f"\ncorrupt study's reason: {r_bad.reason}")
    r_good = by_uid[good[0].StudyInstanceUID]
    assert r_good.status == "processed", r_good.reason
    for study_id in client.studies():
        uid = client.study(study_id)["MainDicomTags"]["StudyInstanceUID"]
        assert bool(result_series(client, study_id)) == (uid == good[0].StudyInstanceUID)


def test_status_lists_studies_and_credentials_on_the_command_line_are_refused(
    orthanc, bundle: Bundle, shared_predictor, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from lungslice.cli import app

    client = orthanc.client()
    upload(client, study_copy(bundle.study[:1], 9, modality="CR"))
    service = make_service(orthanc, bundle, tmp_path / "state", shared_predictor)
    run_until(service, finished(1), 30)
    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--status", "--state", str(tmp_path / "state")])
    assert res.exit_code == 0, res.output
    assert "0 processed" in res.output and "1 skipped" in res.output
    assert "no CT series (the study holds CR)" in res.output
    base = ["serve", "--orthanc", orthanc.url, "--model", str(bundle.model)]
    base += ["--state", str(tmp_path / "cli-state")]
    res = runner.invoke(app, [*base, "--password", "hunter2"])
    assert res.exit_code == 2
    assert "--password: credentials on the command line are refused" in res.output
    url = orthanc.url.replace("http://", "http://lungslice:x@")
    res = runner.invoke(app, [*base[:2], url, *base[3:]])
    assert res.exit_code == 2
    assert "credentials in the URL are refused" in res.output
    dead = f"http://127.0.0.1:{free_port()}"
    wait = ["--orthanc-wait", "5", "--orthanc-tries", "2", "--once"]
    cred = ["--credentials", str(orthanc.credentials_path)]
    res = runner.invoke(app, [*base[:2], dead, *base[3:], *cred, *wait])
    assert res.exit_code == 2, res.output
    assert f"Orthanc at {dead} did not answer (start-up: 2 tries in " in res.output
    assert "Check that Orthanc runs" in res.output
    bad = tmp_path / "wrong"
    bad.write_text("lungslice:not-the-password\n")
    bad.chmod(0o600)
    res = runner.invoke(app, [*base, "--credentials", str(bad), "--once"])
    assert res.exit_code == 2
    assert "HTTP 401" in res.output and "--credentials" in res.output


def _run_in_thread(service, until, timeout_s: float) -> tuple[threading.Thread, list]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_until(service, until, timeout_s)
        except BaseException as err:  # the test inspects it
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_the_service_waits_for_an_orthanc_started_after_it(
    bundle: Bundle, shared_predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = LocalOrthanc(tmp_path / "late", stable_age_s=1)  # ports chosen, not started
    service = make_service(server, bundle, tmp_path / "state", shared_predictor)
    try:
        with caplog.at_level(logging.INFO, logger="lungslice"):
            thread, errors = _run_in_thread(service, finished(1), 120)
            time.sleep(2.0)
            assert thread.is_alive(), errors
            waits = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
            assert waits, "no try was logged"
            assert (
                f"Orthanc at {server.url} does not answer (start-up, try 1 of at most" in waits[0]
            )
            server.start()
            study = study_copy(bundle.study, 12)
            upload(server.client(), study)
            thread.join(150)
        assert not thread.is_alive() and not errors, errors
        (record,) = service.state.studies()
        assert (record.status, record.study_uid) == ("processed", study[0].StudyInstanceUID)
        assert any("answers again (start-up" in r.getMessage() for r in caplog.records)
    finally:
        service.stop()
        server.stop()


def test_an_orthanc_gone_for_good_mid_run_stops_the_service_with_a_clear_error(
    orthanc, bundle: Bundle, shared_predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upload(orthanc.client(), study_copy(bundle.study, 13))
    patience = Patience(max_wait_s=3.0, max_tries=100, initial_delay_s=0.2, max_delay_s=0.5)
    service = make_service(orthanc, bundle, tmp_path / "state", shared_predictor, patience=patience)
    with caplog.at_level(logging.WARNING, logger="lungslice"):
        thread, errors = _run_in_thread(service, lambda st: False, 120)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and service.state.counts()["processed"] < 1:
            time.sleep(0.05)
        assert service.state.counts()["processed"] == 1
        t0 = time.monotonic()
        orthanc.stop()
        thread.join(60)
    assert not thread.is_alive()
    print(f"\nOrthanc stopped -> the service gave up after {time.monotonic() - t0:.1f} s")
    (err,) = errors
    assert isinstance(err, OrthancDownError), err
    assert err.phase == "mid-run" and err.url == orthanc.url
    assert str(err).startswith(f"Orthanc at {orthanc.url} did not answer (mid-run: ")
    messages = [r.getMessage() for r in caplog.records]
    assert any("change feed: Orthanc went away" in m for m in messages)
    assert any("does not answer (mid-run, try 2 of at most 100" in m for m in messages)


def test_dicomweb_fetch_reads_the_same_instances_and_processes_the_study(
    orthanc, bundle: Bundle, tmp_path: Path
) -> None:
    client = orthanc.client()
    ct = study_copy(bundle.study, 14)
    cr = study_copy(bundle.study[:1], 15, modality="CR")
    upload(client, ct)
    upload(client, cr)
    uid = str(ct[0].StudyInstanceUID)
    (study_id,) = [
        s for s in client.studies() if client.study(s)["MainDicomTags"]["StudyInstanceUID"] == uid
    ]
    rest, web = RestFetcher(client), DicomwebFetcher(client)
    (by_rest,) = rest.list_series(study_id, uid)
    (by_web,) = web.list_series(study_id, uid)  # QIDO-RS
    assert (by_web.series_uid, by_web.modality, by_web.instances) == (
        by_rest.series_uid,
        "CT",
        len(ct),
    )
    sent = {part10(ds) for ds in ct}
    got_rest = {p.read_bytes() for p in rest.download(uid, by_rest, tmp_path / "rest")}
    got_web = {p.read_bytes() for p in web.download(uid, by_web, tmp_path / "web")}  # WADO-RS
    assert got_web == got_rest
    assert len(got_web) == len(ct)
    assert {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in got_web} == {
        ds.SOPInstanceUID for ds in ct
    }
    assert got_rest == sent  # Orthanc gives back the files it was sent

    # the command line, once both studies are stable
    from typer.testing import CliRunner

    from lungslice.cli import app

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        changes = client.changes(0, 1000)["Changes"]
        if sum(c["ChangeType"] == "StableStudy" for c in changes) >= 2:
            break
        time.sleep(0.2)
    state = tmp_path / "state"
    runner = CliRunner()
    args = ["serve", "--orthanc", orthanc.url, "--credentials", str(orthanc.credentials_path)]
    args += ["--model", str(bundle.model), "--state", str(state), "--fetch", "dicomweb"]
    res = runner.invoke(app, [*args, "--once"])
    assert res.exit_code == 0, res.output
    assert "fetch dicomweb" in " ".join(res.output.split())  # rich wraps console lines
    by_uid = {r.study_uid: r for r in ServeState(state).studies()}
    done = by_uid[uid]
    assert done.status == "processed", done.reason
    assert {"list", "fetch", "predict", "store", "verify"} <= set(done.timings)
    assert any(k.startswith("predict.") for k in done.timings)
    assert by_uid[str(cr[0].StudyInstanceUID)].reason == "no CT series (the study holds CR)"
    res = runner.invoke(app, ["serve", "--status", "--state", str(state)])
    assert res.exit_code == 0, res.output
    assert "1 processed" in res.output and "1 skipped" in res.output
    assert f"processed {uid}" in res.output and "(fetch " in res.output
    ours = result_series(client, study_id)
    assert len(ours) == 3 and all(len(s["Instances"]) == 1 for s in ours)
