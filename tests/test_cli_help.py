"""Every script runs straight from a shell and its --help gives every option's default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["ingest_hls.py", "outgest_file.py", "simple_edit.py", "sample_content.py", "demo.py"]
CREDENTIAL_OPTIONS = {
    "--tams-url": "TAMS_URL", "--oauth2-url": "OAUTH2_URL", "--client-id": "CLIENT_ID",
    "--client-secret": "CLIENT_SECRET", "--username": "USERNAME", "--password": "PASSWORD",
}


def option_help(help_text: str) -> dict[str, str]:
    """Option name -> its help text, from argparse's output."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)(?:[ ,][^ ].*?)?(?:  +(.*))?$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2) or ""
        elif current and line.startswith("     "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_and_help_gives_every_default(script: str) -> None:
    path = REPO_ROOT / script
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(path, os.X_OK)
    env = dict(os.environ, PATH=f"{REPO_ROOT / 'venv' / 'bin'}:{os.environ['PATH']}", COLUMNS="100")
    result = subprocess.run([f"./{script}", "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    options = option_help(result.stdout)
    assert len(options) >= 2
    for name, text in options.items():
        if name in ("-h", "--help"):
            continue
        assert re.search(r"\(default[: ]|\(required\)|default:", text), f"{script} {name}: {text!r}"
        if name in CREDENTIAL_OPTIONS:
            assert f"${CREDENTIAL_OPTIONS[name]}" in text, f"{script} {name}: {text!r}"
    if script not in ("sample_content.py", "demo.py"):
        assert set(CREDENTIAL_OPTIONS) <= set(options)


@pytest.mark.parametrize("script", ["ingest_hls", "outgest_file"])
def test_thin_script_leaves_the_collector_on_with_its_imports_frozen(script: str) -> None:
    """The command holds the collector off only while it imports its code (``<script>.py``)."""
    code = (f"import gc; import {script}; assert gc.isenabled(); assert gc.get_freeze_count() > 10000; "
            f"import {script.split('_')[0]}_core as core; assert core.main is {script}.main")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
