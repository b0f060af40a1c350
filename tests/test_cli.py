"""`python -m server`: help, configuration errors at start, and the no-key loopback rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from server.__main__ import bind_host, is_loopback
from server.config import load_settings
from tests.conftest import ROOT, server_env


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,  # the callers assert on the exit status
    )


def write_registry(tmp_path: Path, **model_fields) -> Path:
    entry = {"name": "tiny", "source": str(tmp_path / "no-such-model"), "max_model_len": 256, **model_fields}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"default_model": "tiny", "models": [entry]}))
    return path


def test_help_lists_serve_options() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "serve" in top.stdout
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    for option in ("--model", "--host", "--port", "--config"):
        assert option in serve.stdout


def test_models_command_validates_and_lists_registry() -> None:
    listing = run_cli("models")
    assert listing.returncode == 0
    assert "* smollm2-135m-instruct" in listing.stdout
    assert "meta-llama/Llama-3.1-8B-Instruct" in listing.stdout


def test_invalid_registry_entry_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(write_registry(tmp_path, dtype="int3")))
    assert result.returncode != 0
    assert "models[tiny].dtype" in result.stderr


def test_unknown_model_flag_fails_at_start(tmp_path: Path) -> None:
    result = run_cli("serve", "--model", "ghost")
    assert result.returncode != 0
    assert "served_model: 'ghost' is not a model in the registry" in result.stderr


def test_missing_model_directory_fails_at_start_and_no_key_means_loopback(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(write_registry(tmp_path)), "--host", "0.0.0.0", "--port", "0")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"models[tiny].source: {tmp_path / 'no-such-model'} does not exist" in output
    assert "NO API KEY CONFIGURED" in output
    assert "Binding to loopback (127.0.0.1) only, not 0.0.0.0" in output


def test_bind_host_rules() -> None:
    open_settings = load_settings(environ={}, host="0.0.0.0")
    assert bind_host(open_settings) == "127.0.0.1"
    assert bind_host(load_settings(environ={}, host="::1")) == "::1"
    keyed = load_settings(environ={"LLM_SERVER_API_KEYS": "k"}, host="0.0.0.0")
    assert bind_host(keyed) == "0.0.0.0"
    assert bind_host(open_settings, stored_keys=True) == "0.0.0.0"  # keys made with `python -m server keys create`
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")
