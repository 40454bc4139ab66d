"""The `minconv` entry point: help, version, and one-line errors."""

import subprocess
import sys

from typer.testing import CliRunner

from minconv_cli import __version__
from minconv_cli.cli import app

runner = CliRunner()


def test_version_prints_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_the_four_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "rollout", "evaluate", "convert"):
        assert command in result.output


def test_console_script_runs_as_module():
    proc = subprocess.run(
        [sys.executable, "-m", "minconv_cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("minconv ")


def test_every_subcommand_has_working_help():
    for command in ("train", "rollout", "evaluate", "convert"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, f"{command} --help failed: {result.output}"
        assert "Usage" in result.output


def test_errors_are_one_line_and_keep_bracketed_text(tmp_path):
    missing = tmp_path / "absent [split=test].nc"
    result = runner.invoke(app, ["convert", str(missing), str(tmp_path / "out.zarr")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "[split=test]" in lines[0]
    assert "Traceback" not in result.output
