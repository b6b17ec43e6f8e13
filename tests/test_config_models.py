"""Which models to serve: `--model [ALIAS=]SOURCE` (repeatable), MODELS, MODEL_NAME, and the specs
the loader reads from them."""

from __future__ import annotations

import pytest

from trio_infer.config import (
    DEFAULT_MODEL_LABEL,
    ModelSpec,
    Settings,
    build_parser,
    load_settings,
)


def settings(*argv: str, **env: str) -> Settings:
    return load_settings(list(argv), env)


def refused(capsys: pytest.CaptureFixture[str], *argv: str, **env: str) -> str:
    """The one error line of settings that cannot be used (exit status 2)."""
    with pytest.raises(SystemExit) as caught:
        load_settings(list(argv), env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_repeated_flag_serves_each_model_in_order_the_first_is_the_default() -> None:
    result = settings("--model", "small=debug", "--model", "big=/models/big", "--model", "org/model")
    assert result.models == (
        ModelSpec("small", "debug"),
        ModelSpec("big", "/models/big"),
        ModelSpec("org/model", "org/model"),
    )
    assert result.model_specs() == result.models
    assert result.model_specs()[0].name == "small"


def test_without_an_alias_the_source_is_the_name() -> None:
    (spec,) = settings("--model", "debug").models
    assert spec == ModelSpec("debug", "debug")
    assert spec.full_name == "debug"


@pytest.mark.parametrize("given", [DEFAULT_MODEL_LABEL, f"mini={DEFAULT_MODEL_LABEL}"])
def test_the_bundled_model_by_its_full_name_loads_offline(given: str) -> None:
    """The bundled all-MiniLM-L6-v2 is named by its hub id, but loaded from the package (source None)."""
    (spec,) = settings("--model", given).models
    assert spec.source is None
    assert spec.full_name == DEFAULT_MODEL_LABEL
    assert spec.name == ("mini" if given.startswith("mini=") else DEFAULT_MODEL_LABEL)


def test_spaces_around_items_are_ignored() -> None:
    assert settings(MODELS=" a = debug ,b=/x ").models == (ModelSpec("a", "debug"), ModelSpec("b", "/x"))


def test_models_environment_variable_is_comma_separated() -> None:
    result = settings(MODELS="a=debug,b=org/model,/local/folder")
    assert result.models == (
        ModelSpec("a", "debug"),
        ModelSpec("b", "org/model"),
        ModelSpec("/local/folder", "/local/folder"),
    )


def test_a_flag_item_may_hold_several_comma_separated_models() -> None:
    result = settings("--model", "a=debug,b=/x", "--model", "c=/y")
    assert [spec.name for spec in result.models] == ["a", "b", "c"]


def test_the_flag_wins_over_the_environment_variable() -> None:
    assert settings("--model", "flag=debug", MODELS="env=debug").models == (ModelSpec("flag", "debug"),)


def test_an_empty_models_variable_means_not_set() -> None:
    result = settings(MODELS="")
    assert result.models == ()
    assert result.model_specs() == (ModelSpec(DEFAULT_MODEL_LABEL, None),)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--model", "a=debug", "--model", "a=/other"], {}, "'a' is given twice"),
        (["--model", "debug", "--model", "debug"], {}, "'debug' is given twice"),
        (["--model", "debug", "--model", "debug=/x"], {}, "'debug' is given twice"),  # alias = a bare name
        ([], {"MODELS": "a=debug,a=/x"}, "'a' is given twice"),
    ],
)
def test_a_name_given_twice_is_refused(
    argv: list[str], env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(capsys, *argv, **env)
    assert named in err
    assert "--model" in err or "MODELS" in err


@pytest.mark.parametrize(
    "item",
    ["=debug", "a=", "", " ", "a=debug,", ",a=debug", "a b=debug", "a=de bug", "=", "a=debug,,b=/x"],
)
def test_an_empty_or_malformed_item_is_refused(item: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, "--model", item)
    assert "--model" in err
    assert "[ALIAS=]SOURCE" in err


def test_a_malformed_models_variable_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, MODELS="a=debug,=x")
    assert "environment variable MODELS" in err
    assert "'=x'" in err


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {"MODELS": "a=debug", "MODEL_NAME": "debug"}),
        (["--model", "a=debug"], {"MODEL_NAME": "/some/model"}),
    ],
)
def test_model_name_and_models_together_are_refused(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(capsys, *argv, **env)
    assert "MODEL_NAME" in err
    assert "--model/MODELS" in err


def test_json_logs_make_the_refusal_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    err = refused(capsys, "--log-format", "json", "--model", "a=debug", "--model", "a=debug")
    entry = json.loads(err)
    assert entry["level"] == "critical"
    assert "given twice" in entry["message"]


def test_model_specs_default_to_the_bundled_model() -> None:
    assert Settings().model_specs() == (ModelSpec(DEFAULT_MODEL_LABEL, None),)
    assert settings().model_specs() == (ModelSpec(DEFAULT_MODEL_LABEL, None),)


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("debug", ModelSpec("debug", "debug")),
        ("/models/mine", ModelSpec("/models/mine", "/models/mine")),
        (DEFAULT_MODEL_LABEL, ModelSpec(DEFAULT_MODEL_LABEL, None)),
    ],
)
def test_model_name_is_kept_as_the_one_model(model_name: str, expected: ModelSpec) -> None:
    result = settings(MODEL_NAME=model_name)
    assert result.models == ()
    assert result.model_specs() == (expected,)
    assert result.model_label == model_name


def test_for_model_gives_each_model_settings_of_its_own() -> None:
    base = settings("--model", "a=debug", "--model", f"b={DEFAULT_MODEL_LABEL}", "--max-batch-size", "7")
    first, second = (base.for_model(spec) for spec in base.model_specs())
    assert (first.model_name, first.models, first.max_batch_size) == ("debug", (), 7)
    assert (second.model_name, second.models) == (None, ())
    assert second.model_label == DEFAULT_MODEL_LABEL
    # One model alone, so the loader's own reading of the settings sees exactly that model.
    assert first.model_specs() == (ModelSpec("debug", "debug"),)


def test_help_documents_the_model_flag_and_its_variable() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--model [ALIAS=]SOURCE" in text
    assert "env MODELS" in text
    assert "MODEL_NAME" in text
