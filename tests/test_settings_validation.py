"""Every setting, flag and environment variable alike, is checked at start by its declared kind.

The tests iterate over the settings table itself, so a setting added later is covered without
touching this file: a value it cannot use stops the process with one line naming it, exit status 2.
"""

from __future__ import annotations

import math
import subprocess
import sys

import orjson
import pytest

from tests.serverproc import ROOT
from trio_infer.config import (
    Choice,
    Integer,
    ModelList,
    ModelSpec,
    Seconds,
    Setting,
    Settings,
    Text,
    build_parser,
    load_settings,
    settings_table,
)

BAD_VALUES = ("nan", "inf", "-inf", "-1", "abc", "")
SETTINGS = settings_table()


def _id(setting: Setting) -> str:
    return setting.name


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as caught:
        load_settings(argv, env=env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_the_table_covers_every_settings_field() -> None:
    declared = [setting.name for setting in SETTINGS]
    assert sorted(declared) == sorted(Settings.__dataclass_fields__), "declare every field in _FLAGS"
    assert len({setting.env for setting in SETTINGS}) == len(SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_values_are_refused_by_name(
    setting: Setting, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the flag and through the environment variable: refused with one line naming the
    setting and (unless secret) the value, or, for free text only, taken verbatim."""
    sources: list[tuple[list[str], dict[str, str], str]] = [([], {setting.env: value}, setting.env)]
    if setting.flag:
        sources.append(([f"{setting.option}={value}"], {}, setting.option))
    for argv, env, name in sources:
        if value == "" and env and setting.kind.empty_env_is_unset:
            # `VAR=` means unset for a non-secret setting: the default applies.
            assert getattr(load_settings(argv, env=env), setting.name) == getattr(Settings(), setting.name)
            continue
        try:
            accepted = load_settings(argv, env=env)
        except SystemExit as caught:
            assert caught.code == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1, err  # one line
        else:
            # Only free text may take these values, and then exactly as given. A model list's
            # SOURCE is free text too (a hub id or a local folder): one model, named as given.
            if isinstance(setting.kind, ModelList):
                assert getattr(accepted, setting.name) == (ModelSpec(value, value),), (name, value)
                continue
            assert isinstance(setting.kind, Text) and setting.kind.pattern is None, (name, value)
            assert value.strip() and getattr(accepted, setting.name) == value
            continue
        assert name in err and "must be" in err, err
        if not setting.kind.secret and value:
            assert f"got {value}" in err, err


@pytest.mark.parametrize("setting", [s for s in SETTINGS if isinstance(s.kind, (Integer, Seconds))], ids=_id)
def test_numeric_bounds_are_enforced_at_their_edges(
    setting: Setting, capsys: pytest.CaptureFixture[str]
) -> None:
    kind = setting.kind
    if isinstance(kind, Integer):
        inside, outside = [kind.low, kind.high], [kind.low - 1, kind.high + 1]
    else:
        assert isinstance(kind, Seconds)
        inside = [kind.low + 0.5 if kind.strict else kind.low]
        outside = [kind.low if kind.strict else kind.low - 0.001]
        if kind.high is not None:
            inside.append(kind.high)
            outside.append(kind.high + 0.001)
    for value in inside:
        parsed = getattr(load_settings([], env={setting.env: str(value)}), setting.name)
        assert parsed == value and (not isinstance(parsed, float) or math.isfinite(parsed))
    for value in outside:
        refused(capsys, [], {setting.env: str(value)})


def test_message_matches_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, ["--batch-timeout", "nan"], {})
    assert err == (
        "trio-infer: error: --batch-timeout: must be a finite number of seconds >= 0, got nan"
        " (see trio-infer --help)\n"
    )
    err = refused(capsys, [], {"MAX_BATCH_TOKENS": "xyz"})
    assert "environment variable MAX_BATCH_TOKENS: must be 'auto' or a whole number" in err


def test_flag_wins_over_a_bad_environment_value() -> None:
    """The environment variable is only read when the flag is absent."""
    assert load_settings(["--port", "9000"], env={"PORT": "abc"}).port == 9000


def test_empty_api_key_is_refused_and_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--api-key" in refused(capsys, ["--api-key", ""], {})
    assert "API_KEY" in refused(capsys, [], {"API_KEY": ""})
    err = refused(capsys, ["--workers", "0"], {"API_KEY": "s3cret"})
    assert "s3cret" not in err
    assert load_settings([], env={"API_KEY": "k"}).api_key == "k"


def test_choices_are_case_insensitive_and_listed_in_help() -> None:
    assert load_settings(["--log-level", "CRITICAL"], env={}).log_level == "critical"
    help_text = " ".join(build_parser({}).format_help().split())
    for setting in SETTINGS:
        if isinstance(setting.kind, Choice) and setting.flag:
            for choice in setting.kind.choices:
                assert choice in help_text


def test_bad_setting_exits_before_anything_loads() -> None:
    """The real entry point: one line, status 2, and no import of the model or web stack first."""
    code = (
        "import sys, runpy; sys.argv = ['trio-infer', '--graceful-timeout', 'inf'];\n"
        "try:\n    runpy.run_module('trio_infer', run_name='__main__')\n"
        "finally:\n    print(sorted(m for m in ('torch', 'hypercorn', 'quart') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "trio-infer: error: --graceful-timeout: must be a finite number of seconds > 0, got inf"
        " (see trio-infer --help)"
    ]
    assert result.stdout.strip() == "[]"


def test_version_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_infer", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("trio-infer ") and result.stdout.split()[1][0].isdigit()


def test_readme_configuration_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") : readme.index("## Batching")]
    for setting in SETTINGS:
        assert f"`{setting.env}`" in section, setting.env
        if setting.flag:
            assert f"`{setting.option}`" in section, setting.option


def test_errors_are_json_when_json_logs_were_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, env in (
        (["--log-format", "json", "--port", "abc"], {}),
        (["--port=abc"], {"LOG_FORMAT": "JSON"}),
        (["--log-format=json", "--no-such-flag"], {}),
    ):
        with pytest.raises(SystemExit) as caught:
            load_settings(argv, env=env)
        assert caught.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        entry = orjson.loads(line)
        assert entry["level"] == "critical" and entry["message"], entry


def test_switch_kind_parses_on_and_off_and_refuses_the_rest() -> None:
    """The kind is ready for on/off settings (e.g. --http2); a bare `--flag` means on."""
    from trio_infer.config import Switch

    kind = Switch()
    assert [kind.parse(v) for v in ("on", "TRUE", "1", "yes")] == [True] * 4
    assert [kind.parse(v) for v in ("off", "False", "0", "no")] == [False] * 4
    for bad in BAD_VALUES:
        with pytest.raises(ValueError, match="must be on or off"):
            kind.parse(bad)
