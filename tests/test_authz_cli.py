"""``python -m authz_proxy`` as a user runs it: configured from the environment, one start-up
line, serving until SIGTERM; bad settings give one line on stderr and exit 2."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from authz_support import PROXY_CLIENT, client

from authz_proxy.__main__ import build_parser, config_from, settings
from authz_proxy.classes import ClassModel
from tests.conftest import RunningStore

ROOT = Path(__file__).resolve().parent.parent


def proxy_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSTREAM_", "API_URL", "JWKS_URL"))}
    env.update({
        "API_URL": url,
        "JWKS_URL": url + "/.well-known/jwks.json",
        "UPSTREAM_OAUTH2_URL": url + "/oauth2/token",
        "UPSTREAM_CLIENT_ID": PROXY_CLIENT["client_id"],
        "UPSTREAM_CLIENT_SECRET": PROXY_CLIENT["client_secret"],
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def token(store: RunningStore, client_id: str) -> str:
    secret = f"{client_id}-secret"
    request = urllib.request.Request(store.oauth2_url, data=b"grant_type=client_credentials", method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["access_token"])


def test_serves_until_sigterm(store_factory: Callable[..., RunningStore]) -> None:
    store = store_factory(clients=[PROXY_CLIENT, client("news", ["news_read"])])
    process = subprocess.Popen([sys.executable, "-m", "authz_proxy", "--port", "0"], cwd=ROOT,
                               env=proxy_env(store.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        assert line.startswith("TAMS authz proxy at http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        request = urllib.request.Request(url + "/service")
        request.add_header("Authorization", "Bearer " + token(store, "news"))
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["api_version"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        stderr = process.stderr.read().decode() if process.stderr else ""
        assert PROXY_CLIENT["client_secret"] not in stderr
        assert "GET /service 200 news" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"API_URL": ""}, "--api-url (API_URL) is required"),
        ([], {"JWKS_URL": "ftp://x"}, "is not an http(s) URL"),
        ([], {"UPSTREAM_CLIENT_SECRET": ""}, "incomplete upstream OAuth2 client"),
        (["--port", "eighty"], {}, "--port must be a number"),
        (["--log-level", "loud"], {}, "is not a logging level"),
        (["--max-segment-objects", "0"], {}, "--max-segment-objects must be at least 1"),
        (["--class-model", "bbc"], {}, "--class-model must be one of auto, group, class, not 'bbc'"),
        ([], {"AUTHZ_CLASS_MODEL": "roles"}, "--class-model must be one of auto, group, class, not 'roles'"),
    ],
)
def test_bad_settings_fail_in_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "authz_proxy", *args], cwd=ROOT,
                            env=proxy_env("http://127.0.0.1:9", **env), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_every_setting() -> None:
    result = subprocess.run([sys.executable, "-m", "authz_proxy", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, check=True)
    for env in ("API_URL", "JWKS_URL", "GROUP_CLAIM", "ISSUER", "AUDIENCE", "UPSTREAM_CLIENT_ID",
                "UPSTREAM_CLIENT_SECRET", "UPSTREAM_OAUTH2_URL", "UPSTREAM_USERNAME", "UPSTREAM_PASSWORD",
                "PASS_THROUGH_TOKEN", "PROXY_PORT", "MAX_SEGMENT_OBJECTS", "CURSOR_SECRET", "AUTHZ_CLASS_MODEL"):
        assert env in result.stdout
    assert "(default: $PROXY_PORT, else 8001)" in " ".join(result.stdout.split())
    assert "(default: $AUTHZ_CLASS_MODEL, else auto)" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("args", "env", "model"),
    [
        ([], {}, ClassModel.AUTO),
        (["--class-model", "group"], {}, ClassModel.GROUP),
        ([], {"AUTHZ_CLASS_MODEL": "class"}, ClassModel.CLASS),
        (["--class-model", "class"], {"AUTHZ_CLASS_MODEL": "group"}, ClassModel.CLASS),  # the flag wins
    ],
)
def test_class_model_comes_from_flag_else_environment_else_auto(args: list[str], env: dict[str, str],
                                                                 model: ClassModel) -> None:
    environ = {"API_URL": "http://127.0.0.1:9", "JWKS_URL": "http://127.0.0.1:9/jwks", **env}
    parsed = build_parser().parse_args([*args, "--pass-through-token"])
    config, _, _ = config_from(settings(parsed, environ))
    assert config.class_model is model
