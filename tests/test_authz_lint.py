"""The authz_proxy package passes ruff and mypy (settings in authz_proxy/ruff.toml and mypy.ini)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)


def test_ruff_passes() -> None:
    result = run(str(BIN / "ruff"), "check", "authz_proxy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes() -> None:
    result = run(str(BIN / "mypy"), "--config-file", "authz_proxy/mypy.ini", "authz_proxy")
    assert result.returncode == 0, result.stdout + result.stderr
