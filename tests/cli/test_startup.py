"""Start-up: the CLI parses its arguments before importing the science stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "timm", "sklearn", "matplotlib", "scipy.signal")


def test_import_cli_does_not_import_torch() -> None:
    code = f"import sys, lungslice.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [m for m in done.stdout.strip().split(",") if m]
    assert "torch" not in loaded, loaded
    assert "timm" not in loaded, loaded


def test_help_lists_commands_without_the_model_stack() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lungslice.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0 and 'predict' in r.output, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
