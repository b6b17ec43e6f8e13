"""Model prompts, with sentence-transformers' semantics: named texts prepended to an input.

A model's own prompts come from its `config_sentence_transformers.json` (`prompts`,
`default_prompt_name`), as `SentenceTransformer` reads them; `--prompt NAME=TEXT` adds to or replaces
them and `--default-prompt-name` sets the default, for every served model. A request picks one by
`prompt_name` (or, on `/v1/embeddings`, by `input_type`); with neither, the default applies, and with
no default, none. Applying a prompt is `prompt + text`, exactly what `SentenceTransformer.encode(text,
prompt_name=...)` tokenizes, so token counts, truncation and `usage` include the prompt's tokens.

`resolve` is the one place a request's choice becomes prompt text; the HTTP handlers call it and
prepend the text before admitting the input, so the core only ever sees prompt-applied text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import BadRequest
from ..core.served_model import ServedModel

CONFIG_FILE = "config_sentence_transformers.json"

# `input_type` (NVIDIA's and Voyage's APIs) -> the prompt names it may select, in order of preference.
# `document` and `passage` mean the same thing: a model with only one of them serves both.
INPUT_TYPES: Mapping[str, tuple[str, ...]] = {
    "query": ("query",),
    "document": ("document", "passage"),
    "passage": ("passage", "document"),
}


class PromptConfigError(ValueError):
    """The configured prompts cannot work with a model (the message names the model's prompts)."""


@dataclass(frozen=True, slots=True)
class Prompts:
    """A model's prompts by name, and the name applied when a request names none."""

    texts: Mapping[str, str] = field(default_factory=dict)
    default_name: str | None = None


def from_config(config: Mapping[str, Any], *, where: str) -> Prompts:
    """The prompts of a parsed `config_sentence_transformers.json`; raises PromptConfigError for a
    `prompts` that is not an object of strings."""
    texts = config.get("prompts") or {}
    default = config.get("default_prompt_name")
    if not isinstance(texts, dict) or not all(
        isinstance(name, str) and isinstance(text, str) for name, text in texts.items()
    ):
        raise PromptConfigError(f"{where}: 'prompts' must be an object of strings")
    if default is not None and not isinstance(default, str):
        raise PromptConfigError(f"{where}: 'default_prompt_name' must be a string")
    return Prompts(dict(texts), default)


def read_prompts(config_path: str | Path | None) -> Prompts:
    """The prompts in the model's config file (none where it has no such file). Blocking."""
    if config_path is None or not Path(config_path).is_file():
        return Prompts()
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PromptConfigError(f"{config_path}: {error}") from error
    if not isinstance(config, dict):
        raise PromptConfigError(f"{config_path}: not a JSON object")
    return from_config(config, where=str(config_path))


def describe(texts: Mapping[str, str]) -> str:
    """The prompt names, for messages: `'passage', 'query'` or `none`."""
    return ", ".join(repr(name) for name in sorted(texts)) or "none"


def configure(
    own: Prompts,
    added: Sequence[tuple[str, str]],
    default_name: str | None,
    *,
    model: str,
) -> Prompts:
    """The model's own prompts with `--prompt`'s added (replacing any of the same name) and
    `--default-prompt-name` (else the model's own default). Raises PromptConfigError when the default
    names no prompt the model has."""
    texts = {**own.texts, **dict(added)}
    default = default_name if default_name is not None else own.default_name
    if default is not None and default not in texts:
        flag = "--default-prompt-name" if default_name is not None else "its default_prompt_name"
        raise PromptConfigError(
            f"{flag} {default!r} is not a prompt of model {model}; its prompts: {describe(texts)} "
            "(add one with --prompt NAME=TEXT)"
        )
    return Prompts(texts, default)


def resolve(model: ServedModel, *, prompt_name: str | None = None, input_type: str | None = None) -> str:
    """The prompt text to prepend for a request to `model` ("" for none).

    `prompt_name` names a prompt of the model; `input_type` (one of INPUT_TYPES) selects the model's
    prompt of that name (`document` and `passage` fall back on each other). Given both, they must
    select the same prompt. With neither, the model's default prompt, else none. Raises BadRequest
    (400, `param` set) naming the model's prompts when the choice selects none of them."""
    texts = model.prompts
    chosen: str | None = None
    if prompt_name is not None:
        if prompt_name not in texts:
            raise BadRequest(
                f"prompt_name {prompt_name!r} is not a prompt of model {model.name}; "
                f"its prompts: {describe(texts)}",
                param="prompt_name",
                code="unknown_prompt",
            )
        chosen = prompt_name
    if input_type is not None:
        selected = next((name for name in INPUT_TYPES[input_type] if name in texts), None)
        if selected is None:
            raise BadRequest(
                f"input_type {input_type!r} needs a prompt named "
                f"{' or '.join(repr(n) for n in INPUT_TYPES[input_type])}, which model {model.name} "
                f"lacks; its prompts: {describe(texts)}",
                param="input_type",
                code="unknown_prompt",
            )
        if chosen is not None and chosen != selected:
            raise BadRequest(
                f"prompt_name {prompt_name!r} and input_type {input_type!r} select different prompts "
                f"({chosen!r} and {selected!r}); send one of them",
                param="input_type",
                code="conflicting_prompts",
            )
        chosen = selected
    if chosen is None:
        chosen = model.default_prompt_name
    return "" if chosen is None else texts[chosen]


def apply(prompt: str, texts: Sequence[str]) -> list[str]:
    """Each text with `prompt` prepended, as sentence-transformers does (`prompt + text`)."""
    return [prompt + text for text in texts] if prompt else list(texts)


__all__ = [
    "CONFIG_FILE",
    "INPUT_TYPES",
    "PromptConfigError",
    "Prompts",
    "apply",
    "configure",
    "describe",
    "from_config",
    "read_prompts",
    "resolve",
]
