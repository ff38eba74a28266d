"""Every command on each bad input, exactly as a user types it.

Each case asserts: no traceback, a non-zero exit code, and a message that
names the offending file (or folder), with the remedy phrased as CLI flags.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.testing import write_ct_series

runner = CliRunner()


def _run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    text = result.output
    assert "Traceback" not in text, text
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return result.exit_code, " ".join(text.split())  # one line: rich wraps long messages


def _fails(args: list[str | Path], *needles: str | Path) -> str:
    code, text = _run(*args)
    assert code != 0, text
    for needle in needles:
        assert " ".join(str(needle).split()) in text, (needle, text)
    return text


# --------------------------------------------------------------------------- series makers


def _no_rescale(folder: Path) -> list[Path]:
    return write_ct_series(folder, RescaleSlope=None, RescaleIntercept=None)


def _gap(folder: Path) -> list[Path]:
    return write_ct_series(
        folder, n_slices=6, z_positions=[0.0, 2.5, 5.0, 12.5, 15.0, 17.5], spacing=(2.5, 1, 1)
    )


def _short(folder: Path) -> list[Path]:
    return write_ct_series(folder, n_slices=2, spacing=(5.0, 0.7, 0.7))


BAD_SERIES: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    "missing rescale": (_no_rescale, "--allow-missing-rescale"),
    "gap": (_gap, "--allow-gaps"),
}


@pytest.mark.parametrize("case", sorted(BAD_SERIES))
def test_bad_series_every_command(case: str, tmp_path: Path) -> None:
    make, flag = BAD_SERIES[case]
    series = tmp_path / "study" / "series"
    paths = make(series)
    # show: the loader's refusal, naming a file, with the flag to opt out
    text = _fails(["show", series], str(series), flag)
    assert "LoadConfig" not in text
    # index: the series is rejected with the reason; no usable series -> exit 1
    text = _fails(["index", tmp_path / "study", "--out", tmp_path / "idx"], flag, "--allow-empty")
    assert any(str(p) in text for p in paths), text
    code, _ = _run("index", tmp_path / "study", "--out", tmp_path / "idx", "--allow-empty")
    assert code == 0
    # predict: refused before the model is read (there is none), saying what is damaged
    text = _fails(["predict", tmp_path / "study", "--model", tmp_path / "no-model"], flag)
    assert "point predict at a folder" not in text
    assert any(str(p) in text for p in paths), text
    # the flag works where it is offered
    code, text = _run("show", series, flag)
    assert code == 0, text


def test_missing_rescale_opt_in_warns_with_the_numbers(tmp_path: Path) -> None:
    _no_rescale(tmp_path / "s")
    code, text = _run("show", tmp_path / "s", "--allow-missing-rescale")
    assert code == 0, text
    assert "air outside the body (image border) reads 24 HU, expected about -1000 HU" in text
    text = _fails(
        ["show", tmp_path / "s", "--allow-missing-rescale", "--hu-check", "refuse"],
        "implausible Hounsfield units",
        "--hu-check warn",
        str(tmp_path / "s"),
    )


def test_too_little_coverage_for_predict(tmp_path: Path) -> None:
    _short(tmp_path / "s")
    _fails(
        ["predict", tmp_path / "s", "--model", tmp_path / "no-model"],
        "cover 10 mm",
        "expected at least 30 mm",
        "--min-coverage 10",
        str(tmp_path / "s"),
    )
    code, text = _run("show", tmp_path / "s")  # show has no minimum
    assert code == 0, text


def test_out_is_an_existing_file(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    expected = f"--out {blocker}: an existing file is there"
    _fails(["index", tmp_path / "s", "--out", blocker], expected)
    _fails(["predict", tmp_path / "s", "--model", tmp_path / "none", "--out", blocker], expected)
    _fails(["show", tmp_path / "s", "--png", blocker / "x.png"], f"{blocker} is a file")
    (tmp_path / "dir.png").mkdir()
    _fails(["show", tmp_path / "s", "--png", tmp_path / "dir.png"], "a folder is there")


def test_empty_folder_and_folder_without_ct(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _fails(["index", tmp_path / "empty", "--out", tmp_path / "i"], str(tmp_path / "empty"))
    _fails(["show", tmp_path / "empty"], str(tmp_path / "empty"), "the folder is empty")
    _fails(
        ["predict", tmp_path / "empty", "--model", tmp_path / "m"],
        str(tmp_path / "empty"),
        "no CT series",
    )
    write_ct_series(tmp_path / "cr", modality="CR")
    _fails(["predict", tmp_path / "cr", "--model", tmp_path / "m"], "CR (1)")


def test_symlinked_series_folder_is_followed(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "store" / "series")
    tree = tmp_path / "tree" / "patient"
    tree.mkdir(parents=True)
    (tree / "study").symlink_to(tmp_path / "store", target_is_directory=True)
    (tree / "loop").symlink_to(tmp_path / "tree", target_is_directory=True)
    code, text = _run("index", tmp_path / "tree", "--out", tmp_path / "idx")
    assert code == 0, text
    series = pd.read_parquet(tmp_path / "idx" / "series.parquet")
    assert list(series["status"]) == ["ok"] and int(series["n_slices"].iloc[0]) == 8
    assert f"skipped: {tree / 'loop'}: skipped link" in text and "is a loop" in text


def test_unreadable_file_is_named_with_the_os_error(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "s", n_slices=16)
    gone = tmp_path / "s" / "0099.dcm"
    gone.symlink_to(tmp_path / "elsewhere.dcm")  # a slice the OS cannot open
    text = _fails(
        ["index", tmp_path / "s", "--out", tmp_path / "i"], str(gone), "FileNotFoundError"
    )
    assert "unreadable file" in text
    _fails(["show", tmp_path / "s"], str(gone), "No such file or directory")
    _fails(["predict", tmp_path / "s", "--model", tmp_path / "m"], str(gone))
    if os.geteuid() != 0:  # root reads any file: permissions only bite other users
        gone.unlink()
        paths[3].chmod(0)
        try:
            _fails(["show", tmp_path / "s"], str(paths[3]), "PermissionError")
        finally:
            paths[3].chmod(0o644)


def test_files_without_series_uid_are_grouped(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", SeriesInstanceUID=None)
    code, text = _run("index", tmp_path / "s", "--out", tmp_path / "i")
    assert code == 0, text
    files = pd.read_parquet(tmp_path / "i" / "files.parquet")
    assert (files["status"] == "used").all()
    assert files["series_uid"].nunique() == 1 and files["series_uid"].iloc[0].startswith("2.25.")
    assert set(files["series_uid_source"]) == {"derived: folder + geometry (no SeriesInstanceUID)"}
    code, text = _run("show", tmp_path / "s", "--json")
    assert code == 0, text
    assert files["series_uid"].iloc[0] in text


def test_several_series_fix_is_a_flag(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", patient_id="A")
    write_ct_series(tmp_path / "s", patient_id="B", file_name="b{index:04d}.dcm", seed=1)
    text = _fails(["show", tmp_path / "s"], "holds 2 CT series", "--series-uid UID")
    assert "series_uid=" not in text


@pytest.mark.slow
def test_truncated_model_json(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", n_slices=16)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"format": "lungslice.bundle"})[:12])
    text = _fails(
        ["predict", tmp_path / "s", "--model", model],
        str(model / "model.json"),
        "not valid JSON",
        "copy the bundle directory",
    )
    assert "JSONDecodeError" not in text.split("not valid JSON")[0]
