"""Output folders: checked up front, staged under a temporary name, locked, swapped whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lungslice.errors import OutputLocationError
from lungslice.outputs import check_output_location, lock_path, staged_output


def test_check_output_location_refuses_a_file_where_a_folder_goes(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(OutputLocationError, match=rf"--out {target}: an existing file is there"):
        check_output_location(target, what="--out")
    with pytest.raises(OutputLocationError, match=rf"{target} is a file, so nothing can be"):
        check_output_location(target / "sub" / "deeper")
    folder = tmp_path / "png"
    folder.mkdir()
    with pytest.raises(OutputLocationError, match="a folder is there, expected a file name"):
        check_output_location(folder, kind="file", what="--png")
    assert check_output_location(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert check_output_location(tmp_path / "a.png", kind="file") == tmp_path / "a.png"


def test_staged_output_swaps_whole_and_keeps_old_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    with staged_output(out, run_id="1.2.3") as tmp:
        assert tmp != out and tmp.parent == out.parent
        assert lock_path(out).exists()
        (tmp / "result.json").write_text('{"run": 1}')
        assert not out.exists()  # nothing visible until the run is done
    assert json.loads((out / "result.json").read_text()) == {"run": 1}
    assert not lock_path(out).exists()

    with pytest.raises(RuntimeError, match="inference failed"):
        with staged_output(out, run_id="1.2.4") as tmp:
            (tmp / "result.json").write_text('{"run": 2}')
            (tmp / "partial.html").write_text("half")
            raise RuntimeError("inference failed")
    assert json.loads((out / "result.json").read_text()) == {"run": 1}
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no leftovers, no lock

    with staged_output(out, run_id="1.2.5") as tmp:
        (tmp / "report.html").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # old files gone


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "results"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    lock_path(out).write_text(
        json.dumps({"pid": pid, "host": os.uname().nodename, "run_id": "old"})
    )
    with staged_output(out, run_id="new") as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lungslice.outputs import staged_output
    out, run, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    with staged_output(out, run_id=run) as tmp:
        (tmp / "result.json").write_text(run)
        ready.write_text("holding")
        time.sleep(float(sys.argv[4]))
    """
)


def test_second_process_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    ready = tmp_path / "ready"
    first = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out), "study-A", str(ready), "3"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "first writer never took the lock"
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-c", _WRITER, str(out), "study-B", str(tmp_path / "r2"), "0"],
            capture_output=True,
            text=True,
        )
        assert second.returncode != 0
        assert "OutputBusyError" in second.stderr
        assert f"another run is writing it (run 'study-A', pid {first.pid}" in second.stderr
    finally:
        assert first.wait(timeout=30) == 0
    assert (out / "result.json").read_text() == "study-A"
    assert not lock_path(out).exists()
