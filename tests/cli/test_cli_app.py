"""The app: help texts with units, version, error handling (one line, exit 2) versus tracebacks (exit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vitreous as package
from vitreous.cli import info
from vitreous.cli.main import COMMANDS


def test_app_help_lists_every_command(vitreous) -> None:
    outcome = vitreous("--help")
    assert outcome.code == 0
    for command in COMMANDS:
        assert command.replace("_", "-") in outcome.out
    assert "Å" in outcome.out and "1-based" in outcome.out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_explains_units(vitreous, command: str) -> None:
    outcome = vitreous(command.replace("_", "-"), "--help")
    assert outcome.code == 0 and "Usage" in outcome.out
    assert "Å" in outcome.out


def test_version(vitreous) -> None:
    outcome = vitreous("--version")
    assert outcome.code == 0 and outcome.out.strip() == f"vitreous {package.__version__}"


def test_usage_errors_stay_typer_errors(vitreous) -> None:
    outcome = vitreous("info")
    assert outcome.code == 2 and "Missing argument" in outcome.err
    assert vitreous("no-such-command").code == 2


def test_unexpected_errors_are_not_hidden(vitreous, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(info, "summarise", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # reaches Python: traceback and exit code 1
        vitreous("info", tmp_path / "x.star")


def test_console_script_prints_one_line_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("vitreous")
    if not script.exists():
        pytest.skip("console script not installed")
    done = subprocess.run([str(script), "info", str(tmp_path / "absent.star")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("vitreous: error: ")
    assert "absent.star" in done.stderr and "Traceback" not in done.stderr
