"""Flags, their environment fallbacks, validation, and --help staying true to the code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trio_infer.config import Settings, build_parser, load_settings

FLAG_ENV = {
    "--host": "HOST",
    "--port": "PORT",
    "--max-batch-size": "MAX_BATCH_SIZE",
    "--batch-timeout": "BATCH_TIMEOUT",
    "--num-batching-workers": "NUM_BATCHING_WORKERS",
    "--request-timeout": "REQUEST_TIMEOUT",
    "--graceful-timeout": "GRACEFUL_TIMEOUT",
    "--log-level": "LOG_LEVEL",
}


def test_defaults_match_the_spec() -> None:
    settings = load_settings([], env={})
    assert (settings.host, settings.port) == ("0.0.0.0", 8001)
    assert settings.max_batch_size == 32
    assert settings.batch_timeout == 0.0
    assert settings.num_batching_workers == 4
    assert settings.request_timeout == 30.0
    assert settings.max_batch_tokens is None  # calibrated
    assert settings.model_name is None and settings.model_label == "sentence-transformers/all-MiniLM-L6-v2"


def test_environment_fills_in_and_flags_win() -> None:
    env = {
        "PORT": "9000",
        "BATCH_TIMEOUT": "0.5",
        "MODEL_NAME": "debug",
        "DEVICE": "cpu",
        "MAX_BATCH_TOKENS": "512",
    }
    settings = load_settings([], env=env)
    assert settings.port == 9000 and settings.batch_timeout == 0.5
    assert settings.model_name == "debug" and settings.device == "cpu"
    assert settings.max_batch_tokens == 512
    assert load_settings(["--port", "9100"], env=env).port == 9100
    assert load_settings(["--max-batch-tokens", "auto"], env=env).max_batch_tokens is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "0"],
        ["--max-batch-size", "0"],
        ["--request-timeout", "-1"],
        ["--log-format", "xml"],
        ["--max-batch-tokens", "-5"],
    ],
)
def test_invalid_settings_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(argv, env={})
    assert caught.value.code == 2
    assert "error" in capsys.readouterr().err


def test_malformed_environment_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        load_settings([], env={"PORT": "eighty"})


def test_help_documents_every_flag_and_its_variable() -> None:
    help_text = " ".join(build_parser({}).format_help().split())
    for flag, var in FLAG_ENV.items():
        assert flag in help_text and f"env {var}" in help_text
    for var in ("MODEL_NAME", "HF_TOKEN", "DEVICE"):
        assert var in help_text
    fields = set(Settings.__dataclass_fields__) - {"model_name", "hf_token", "device"}
    renamed = {"models": "--model", "prompts": "--prompt"}  # singular: the flag is given once per item
    for name in fields:
        assert renamed.get(name, "--" + name.replace("_", "-")) in help_text, name


def test_console_entry_point_prints_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_infer", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--max-batch-size" in result.stdout and "MODEL_NAME" in result.stdout


def test_help_never_prints_a_secret_from_the_environment() -> None:
    help_text = build_parser({"API_KEY": "top-secret-key"}).format_help()
    assert "top-secret-key" not in help_text
