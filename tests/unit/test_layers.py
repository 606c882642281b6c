"""The package's layers (DESIGN.md, Layout) are enforced, not hoped for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    # import-linter reads the contracts from pyproject.toml ([tool.importlinter]).
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exit_code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "KEPT" in out  # the contracts were really checked
    assert exit_code == 0, out
