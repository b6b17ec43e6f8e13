"""Service settings: one frozen dataclass, filled from flags that fall back to environment variables.

Every setting is declared once, in `_FLAGS`, with the kind of value it takes (`Seconds`, `Integer`,
`Choice`, `Text`, `Switch`, `TokenBudget`). The kind parses the raw string and states what is allowed, so a
value a setting cannot work with (`nan`, `inf`, out of range, a word where a number belongs) is
refused at start, before anything loads, with one line such as
`--batch-timeout: must be a finite number of seconds >= 0, got nan` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

DEFAULT_MODEL_LABEL = "sentence-transformers/all-MiniLM-L6-v2"
DEBUG_MODEL = "debug"
PROG = "trio-infer"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model to serve: `name` is what clients send (and the `model` metric label); `source` is a
    hub id, a local sentence-transformers folder or `debug`, None for the bundled all-MiniLM-L6-v2."""

    name: str
    source: str | None

    @property
    def full_name(self) -> str:
        return self.source or DEFAULT_MODEL_LABEL


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8001
    max_batch_size: int = 32
    batch_timeout: float = 0.0
    num_batching_workers: int = 4
    request_timeout: float = 30.0
    graceful_timeout: float = 30.0
    drain_delay: float = 0.0
    log_level: str = "info"
    log_format: str = "text"
    max_batch_tokens: int | None = None  # None: calibrate at start-up
    max_queue_size: int = 4096
    max_body_size: int = 1024 * 1024
    api_key: str | None = None
    workers: int = 1
    watchdog_timeout: float = 60.0
    model_name: str | None = None  # None: the bundled all-MiniLM-L6-v2
    hf_token: str | None = None
    device: str | None = None  # None: cuda if available, else cpu
    body_timeout: float = 30.0
    max_concurrent_requests: int = 512
    heartbeat_timeout: float = 30.0
    http2: bool = False
    header_timeout: float = 10.0
    write_timeout: float = 30.0
    max_connections: int = 1024
    debug_faults: bool = False
    backend: str = "auto"  # auto, torch, openvino or onnx
    quantize: str = "none"  # none or int8
    dtype: str = "auto"  # torch's dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16
    cache_dir: str = "~/.cache/trio-infer"  # exported models and auto's decision
    max_input_chars: int = 1024
    models: tuple[ModelSpec, ...] = ()  # empty: the one model of MODEL_NAME
    cache_size: int = 128 * 1024 * 1024  # bytes of embedding cache per model (0: off)
    bulk_min_share: float = 0.1
    max_bulk_queue_size: int = 4096
    bulk_batch_tokens: int | None = None  # None: from the calibrated cost model
    default_priority: str = "interactive"  # a core.priority label
    api_keys_file: str | None = None  # None: --api-key's one caller, or no key
    max_client_batch_size: int = 32  # TEI's default: texts per request on TEI's API
    prompts: tuple[tuple[str, str], ...] = ()  # (name, text) added to every model's own prompts
    default_prompt_name: str | None = None  # None: each model's own default prompt (if any)

    @property
    def model_label(self) -> str:
        """The model name reported to clients."""
        return self.model_name or DEFAULT_MODEL_LABEL

    def model_specs(self) -> tuple[ModelSpec, ...]:
        """Every model to serve, the default first: `--model`/MODELS, else the one of MODEL_NAME."""
        if self.models:
            return self.models
        return (ModelSpec(self.model_label, _source(self.model_label)),)

    def for_model(self, spec: ModelSpec) -> Settings:
        """These settings with `spec` as the one model (what loading a model reads)."""
        return dataclasses.replace(self, model_name=spec.source, models=())


def _source(given: str) -> str | None:
    """The bundled model answers to its full name, offline."""
    return None if given == DEFAULT_MODEL_LABEL else given


# ------------------------------------------------------------------------------------------ kinds
class Kind:
    """How a setting's raw string becomes its value. `parse` raises ValueError("must be ...")."""

    metavar = "VALUE"
    secret = False  # never echo the value (in --help or in an error)
    empty_env_is_unset = True  # `VAR=` in the environment means "not set"
    repeatable = False  # the flag may be given several times (its values are joined by `separator`)
    separator = ","

    def parse(self, raw: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """What is allowed, for --help."""
        raise NotImplementedError


@dataclass(frozen=True)
class Seconds(Kind):
    """A finite number of seconds, `>= low` (or `> low` when `strict`), at most `high`."""

    low: float = 0.0
    strict: bool = False
    high: float | None = None
    metavar = "SECONDS"

    def parse(self, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        too_low = value <= self.low if self.strict else value < self.low
        if not math.isfinite(value) or too_low or (self.high is not None and value > self.high):
            raise ValueError(f"must be {self.describe()}")
        return value

    def describe(self) -> str:
        bound = f"{'>' if self.strict else '>='} {self.low:g}"
        if self.high is not None:
            bound += f" and <= {self.high:g}"
        return f"a finite number of seconds {bound}"


@dataclass(frozen=True)
class Integer(Kind):
    """A whole number in `[low, high]`."""

    low: int
    high: int
    metavar = "N"

    def parse(self, raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"must be {self.describe()}") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"must be {self.describe()}")
        return value

    def describe(self) -> str:
        return f"a whole number from {self.low} to {self.high}"


@dataclass(frozen=True)
class TokenBudget(Integer):
    """`auto` (None: calibrate at start-up) or a whole number in `[low, high]`."""

    metavar = "auto|N"

    def parse(self, raw: str) -> int | None:  # type: ignore[override]
        if raw.strip().lower() == "auto":
            return None
        return super().parse(raw)

    def describe(self) -> str:
        return f"'auto' or {super().describe()}"


@dataclass(frozen=True)
class Choice(Kind):
    """One of `choices` (case-insensitive; the value is lower-cased)."""

    choices: tuple[str, ...]

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return "{" + ",".join(self.choices) + "}"

    def parse(self, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.choices:
            raise ValueError(f"must be {self.describe()}")
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Text(Kind):
    """Free text, taken as given. `pattern` (a full match) restricts it; `secret` hides it."""

    secret: bool = False
    pattern: str | None = None
    what: str = "a non-empty string"
    metavar = "TEXT"

    @property
    def empty_env_is_unset(self) -> bool:  # type: ignore[override]
        # An empty secret (`API_KEY=`) would silently turn a protection off: refuse it instead.
        return not self.secret

    def parse(self, raw: str) -> str:
        if not raw.strip() or (self.pattern is not None and not re.fullmatch(self.pattern, raw)):
            raise ValueError(f"must be {self.describe()}")
        return raw

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class PromptName(Text):
    """A prompt's name (which prompts exist is known only once the model has loaded)."""

    what: str = "a prompt name"
    metavar = "NAME"


@dataclass(frozen=True)
class ModelList(Kind):
    """Models to serve: `[ALIAS=]SOURCE` items, comma-separated (or one per repeated flag)."""

    metavar = "[ALIAS=]SOURCE"
    repeatable = True

    def parse(self, raw: str) -> tuple[ModelSpec, ...]:
        specs: list[ModelSpec] = []
        for item in raw.split(","):
            alias, equals, source = item.strip().partition("=")
            if not equals:
                alias, source = "", alias
            alias, source = alias.strip(), source.strip()
            if not source or (equals and not alias) or re.search(r"\s", alias + source):
                raise ValueError(f"must be {self.describe()} (in {item.strip()!r})")
            name = alias or source
            if any(spec.name == name for spec in specs):
                raise ValueError(f"must name each model once ({name!r} is given twice)")
            specs.append(ModelSpec(name, _source(source)))
        return tuple(specs)

    def describe(self) -> str:
        return "[ALIAS=]SOURCE items, SOURCE a hub id, a local folder or 'debug'"


@dataclass(frozen=True)
class Size(Kind):
    """A size in bytes: a whole number with an optional unit (`512MiB`, `1G`, `0`), at most `high`."""

    high: int = 1 << 50
    metavar = "BYTES"

    _UNITS = {
        "": 1,
        "b": 1,
        "k": 1000,
        "kb": 1000,
        "kib": 1 << 10,
        "m": 1000**2,
        "mb": 1000**2,
        "mib": 1 << 20,
        "g": 1000**3,
        "gb": 1000**3,
        "gib": 1 << 30,
        "t": 1000**4,
        "tb": 1000**4,
        "tib": 1 << 40,
    }

    def parse(self, raw: str) -> int:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", raw)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in self._UNITS:
            raise ValueError(f"must be {self.describe()}")
        value = int(match.group(1)) * self._UNITS[unit]
        if value > self.high:
            raise ValueError(f"must be {self.describe()}")
        return value

    def describe(self) -> str:
        return "a whole number of bytes with an optional unit (K, M, G, T; KiB, MiB, GiB, TiB), e.g. 512MiB, or 0"


@dataclass(frozen=True)
class Fraction(Kind):
    """A finite number in [0, 1]."""

    metavar = "FRACTION"

    def parse(self, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise ValueError(f"must be {self.describe()}")
        return value

    def describe(self) -> str:
        return "a number from 0 to 1"


@dataclass(frozen=True)
class PromptList(Kind):
    """Prompts: `NAME=TEXT` items, one per repeated flag (PROMPTS: one per line). TEXT is taken as
    given, spaces included (a prompt usually ends with one, e.g. `query=query: `); NAME is not empty
    and has no whitespace or `=`. A later item of the same NAME replaces an earlier one."""

    metavar = "NAME=TEXT"
    repeatable = True
    separator = "\n"  # prompt texts may hold commas

    def parse(self, raw: str) -> tuple[tuple[str, str], ...]:
        prompts: dict[str, str] = {}
        for item in raw.split(self.separator):
            if not item.strip():
                continue
            name, equals, text = item.partition("=")
            if not equals or not name.strip() or re.search(r"\s", name.strip()):
                raise ValueError(f"must be {self.describe()} (in {item!r})")
            prompts[name.strip()] = text
        if not prompts:
            raise ValueError(f"must be {self.describe()}")
        return tuple(prompts.items())

    def describe(self) -> str:
        return "NAME=TEXT, NAME not empty, TEXT prepended to each input as given"


@dataclass(frozen=True)
class Switch(Kind):
    """On or off: `--flag` alone means on; `--flag=off`, `VAR=1`, `VAR=false`... (case-insensitive)."""

    metavar = "on|off"

    _ON = ("1", "true", "yes", "on")
    _OFF = ("0", "false", "no", "off")

    def parse(self, raw: str) -> bool:
        value = raw.strip().lower()
        if value in self._ON:
            return True
        if value in self._OFF:
            return False
        raise ValueError(f"must be {self.describe()}")

    def describe(self) -> str:
        return "on or off (also true/false, yes/no, 1/0)"


@dataclass(frozen=True)
class Setting:
    """One setting: the Settings field, its environment variable, its kind, its help line.

    `flag=False`: environment only (no command-line flag)."""

    name: str
    env: str
    kind: Kind
    help: str
    flag: bool = True
    flag_name: str | None = None  # the option's name when it is not the field's

    @property
    def option(self) -> str:
        return "--" + (self.flag_name or self.name).replace("_", "-")

    def source(self, from_flag: bool) -> str:
        return self.option if from_flag else f"environment variable {self.env}"


_SECONDS_GE_0 = Seconds(low=0.0)
_SECONDS_GT_0 = Seconds(low=0.0, strict=True)
_TORCH_DEVICE = r"(cpu|cuda|mps|xpu|hpu|npu|meta)(:\d+)?"

# Every setting, once. Defaults come from Settings so the two never disagree.
# To add one: a field at the end of Settings, and an entry at the end of this tuple.
_FLAGS: tuple[Setting, ...] = (
    Setting("host", "HOST", Text(what="a host name or IP address"), "interface to bind"),
    Setting("port", "PORT", Integer(1, 65535), "TCP port to bind"),
    Setting("max_batch_size", "MAX_BATCH_SIZE", Integer(1, 65536), "most texts in one forward pass"),
    Setting(
        "batch_timeout",
        "BATCH_TIMEOUT",
        _SECONDS_GE_0,
        "longest seconds a text waits for batch-mates while the model is idle (0: run at once); "
        "while a pass runs, arrivals join the next pass without a timer",
    ),
    Setting(
        "num_batching_workers",
        "NUM_BATCHING_WORKERS",
        Integer(1, 64),
        "batches' worth of texts tokenized ahead while a pass runs; each pass is planned over them "
        "(more: wider length sorting, less padding)",
    ),
    Setting("request_timeout", "REQUEST_TIMEOUT", _SECONDS_GT_0, "seconds before a request is answered 504"),
    Setting(
        "graceful_timeout",
        "GRACEFUL_TIMEOUT",
        _SECONDS_GT_0,
        "seconds the drain may take after SIGTERM; requests left then get 503",
    ),
    Setting(
        "drain_delay",
        "DRAIN_DELAY",
        _SECONDS_GE_0,
        "seconds between SIGTERM (readiness off) and closing the listener, for load balancers to notice",
    ),
    Setting(
        "log_level",
        "LOG_LEVEL",
        Choice(("debug", "info", "warning", "error", "critical")),
        "least severe level logged (debug also shows the traceback of a start-up error)",
    ),
    Setting("log_format", "LOG_FORMAT", Choice(("text", "json")), "text, or json: one JSON object per line"),
    Setting(
        "max_batch_tokens",
        "MAX_BATCH_TOKENS",
        TokenBudget(1, 10_000_000),
        "padded-token budget of one forward pass (count x longest); 'auto' calibrates it at start-up",
    ),
    Setting(
        "max_queue_size",
        "MAX_QUEUE_SIZE",
        Integer(1, 10_000_000),
        "interactive texts admitted and not yet in a forward pass; beyond it 503 + Retry-After",
    ),
    Setting(
        "max_body_size", "MAX_BODY_SIZE", Integer(1, 1 << 30), "largest request body in bytes (413 beyond)"
    ),
    Setting(
        "api_key",
        "API_KEY",
        Text(secret=True),
        "require 'Authorization: Bearer <key>' on inference routes (an empty key is refused)",
    ),
    Setting("workers", "WORKERS", Integer(1, 256), "worker processes, each with its own model and batcher"),
    Setting(
        "watchdog_timeout",
        "WATCHDOG_TIMEOUT",
        _SECONDS_GT_0,
        "seconds a tokenization or forward pass may run before /health turns 503",
    ),
    Setting(
        "model_name",
        "MODEL_NAME",
        Text(what="a model id or path"),
        "sentence-transformers model id or local path; 'debug' serves hash vectors",
        flag=False,
    ),
    Setting("hf_token", "HF_TOKEN", Text(secret=True), "Hugging Face hub token", flag=False),
    Setting(
        "device",
        "DEVICE",
        Text(pattern=_TORCH_DEVICE, what="a torch device such as cpu, cuda or cuda:1"),
        "torch device",
        flag=False,
    ),
    Setting(
        "heartbeat_timeout",
        "HEARTBEAT_TIMEOUT",
        _SECONDS_GT_0,
        "with --workers: seconds without a heartbeat from a worker's event loop before the "
        "supervisor kills and replaces it",
    ),
    Setting(
        "body_timeout",
        "BODY_TIMEOUT",
        Seconds(low=0.0, strict=True, high=86400.0),
        "seconds a request body may take to arrive; beyond it 408 and the connection closes",
    ),
    Setting(
        "max_concurrent_requests",
        "MAX_CONCURRENT_REQUESTS",
        Integer(1, 1_000_000),
        "requests in progress at once (probes aside); beyond it 503 + Retry-After, body unread",
    ),
    Setting(
        "http2",
        "HTTP2",
        Switch(),
        "accept plaintext HTTP/2 (prior knowledge and Upgrade: h2c); off: HTTP/1.1 only",
    ),
    Setting(
        "header_timeout",
        "HEADER_TIMEOUT",
        Seconds(low=0.0, strict=True, high=3600.0),
        "seconds a request head may take to arrive (from the connect, or from its first byte)",
    ),
    Setting(
        "write_timeout",
        "WRITE_TIMEOUT",
        Seconds(low=0.0, strict=True, high=3600.0),
        "seconds a response write may wait for a client that does not read before it is disconnected",
    ),
    Setting(
        "max_connections",
        "MAX_CONNECTIONS",
        Integer(1, 1_000_000),
        "open client connections; beyond it 503 and close",
    ),
    Setting(
        "debug_faults",
        "DEBUG_FAULTS",
        Switch(),
        "let the debug model obey its fault markers ([[sleep:S]], [[fail]], [[crash]]); tests only",
    ),
    Setting(
        "backend",
        "BACKEND",
        Choice(("auto", "torch", "openvino", "onnx")),
        "inference backend; auto measures which backend is fastest here with torch's vectors",
    ),
    Setting(
        "quantize",
        "QUANTIZE",
        Choice(("none", "int8")),
        "int8: quantized weights (openvino, onnx or auto; costs a little accuracy)",
    ),
    Setting(
        "dtype",
        "DTYPE",
        Choice(("auto", "float32", "float16", "bfloat16")),
        "the torch backend's dtype; auto: float16 on CUDA, else float32",
    ),
    Setting(
        "cache_dir",
        "TRIO_INFER_CACHE_DIR",
        Text(what="a directory path"),
        "where exported models and auto's decision are cached",
    ),
    Setting(
        "max_input_chars",
        "MAX_INPUT_CHARS",
        Integer(1, 1 << 30),
        "longest input_text accepted by POST /embed in characters (422 beyond); /v1 truncates instead",
    ),
    Setting(
        "models",
        "MODELS",
        ModelList(),
        "a model to serve, repeatable (MODELS: comma-separated); clients name it by ALIAS, else by "
        "SOURCE; the first is the default; instead of MODEL_NAME",
        flag_name="model",
    ),
    Setting(
        "cache_size",
        "CACHE_SIZE",
        Size(),
        "bytes of finished vectors each model keeps to answer repeated texts at once (0: off); per "
        "worker process",
    ),
    Setting(
        "bulk_min_share",
        "BULK_MIN_SHARE",
        Fraction(),
        "the least fraction of forward-pass time bulk texts get while interactive texts keep the model busy",
    ),
    Setting(
        "max_bulk_queue_size",
        "MAX_BULK_QUEUE_SIZE",
        Integer(1, 10_000_000),
        "bulk texts admitted and not yet in a forward pass; beyond it 503 + Retry-After for bulk only "
        "(--max-queue-size bounds interactive texts alone)",
    ),
    Setting(
        "bulk_batch_tokens",
        "BULK_BATCH_TOKENS",
        TokenBudget(1, 10_000_000),
        "padded-token budget of a pass holding bulk texts while interactive traffic is active, so a "
        "query waits at most one short pass; 'auto' derives it from the calibrated cost model",
    ),
    Setting(
        "default_priority",
        "DEFAULT_PRIORITY",
        # core.priority.LABELS (config cannot import core: core imports config)
        Choice(("interactive", "bulk")),
        "class of requests that send no X-Priority header and whose API key names none: "
        "interactive (a person waits) is served before bulk (indexing)",
    ),
    Setting(
        "api_keys_file",
        "API_KEYS_FILE",
        Text(what="a file path"),
        "file of 'NAME KEY [PRIORITY]' lines, one caller each (KEY plain or sha256:<hex>); "
        "requires 'Authorization: Bearer <key>' on inference routes; re-read on SIGHUP",
    ),
    Setting(
        "max_client_batch_size",
        "MAX_CLIENT_BATCH_SIZE",
        Integer(1, 1_000_000),
        "texts (or id lists) in one request on TEI's API: POST /embed with inputs, /, /tokenize, /decode; 422 beyond",
    ),
    Setting(
        "prompts",
        "PROMPTS",
        PromptList(),
        "a prompt for every served model, repeatable (PROMPTS: one per line); adds to or replaces the "
        "model's own prompts (config_sentence_transformers.json); requests choose one with prompt_name",
        flag_name="prompt",
    ),
    Setting(
        "default_prompt_name",
        "DEFAULT_PROMPT_NAME",
        PromptName(),
        "the prompt applied when a request names none; every model must have it (checked at start); "
        "overrides the model's own default_prompt_name",
    ),
)

_EPILOG = """\
model selection (environment only):
  MODEL_NAME   sentence-transformers model id or local path (default: the bundled
               all-MiniLM-L6-v2, runs offline); 'debug' serves hash vectors, no model.
               One model; --model/MODELS serve several (not both)
  HF_TOKEN     token passed to the Hugging Face hub for private models
  DEVICE       torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)

A value a setting cannot use (nan, inf, out of range, a word for a number) stops the
server before it loads anything, with one line naming the setting, and exit status 2.
"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("trio-infer")
    except PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """Errors are one line (no usage block), a JSON object when JSON logs were asked for, and exit
    with status 2."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        text = f"{message} (see {self.prog} --help)"
        if self.json_errors:
            import json
            import time

            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "level": "critical",
                "logger": "trio_infer.config",
                "message": text,
            }
            self.exit(2, json.dumps(entry) + "\n")
        self.exit(2, f"{self.prog}: error: {text}\n")


def _asks_for_json(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether `--log-format json` (or LOG_FORMAT=json) was given, read before parsing, so that even
    an error in the other settings comes out as a JSON line."""
    value = env.get("LOG_FORMAT", "")
    for index, arg in enumerate(argv):
        if arg == "--log-format" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--log-format="):
            value = arg.split("=", 1)[1]
    return value.strip().lower() == "json"


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser. Every flag is read as a string (None when absent) and checked by its
    kind in `load_settings`, so a flag and its environment variable are validated the same way.
    `env` is accepted for symmetry with load_settings; help never shows environment values."""
    defaults = Settings()
    parser = _Parser(
        prog=PROG,
        description="Embedding inference server (hypercorn + quart-trio) with token-aware dynamic batching.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    for setting in _FLAGS:
        if not setting.flag:
            continue
        default = getattr(defaults, setting.name)
        shown = (
            "auto"
            if setting.name in ("max_batch_tokens", "bulk_batch_tokens")
            else ("none" if default is None else default)
        )
        if setting.name == "cache_size":
            shown = f"{default // (1 << 20)}MiB"
        if isinstance(shown, bool):
            shown = "on" if shown else "off"
        switch: dict[str, Any] = {"nargs": "?", "const": "on"} if isinstance(setting.kind, Switch) else {}
        if setting.kind.repeatable:
            switch["action"] = "append"
            shown = {"models": "MODEL_NAME's model", "prompts": "the model's own"}.get(setting.name, shown)
        parser.add_argument(
            setting.option,
            dest=setting.name,
            default=None,
            metavar=setting.kind.metavar,
            help=f"{setting.help}; {setting.kind.describe()} [env {setting.env}, default {shown}]",
            **switch,
        )
    return parser


class SettingError(ValueError):
    """A setting's value cannot be used; the message is the one line shown to the user."""


def _shown(setting: Setting, raw: str) -> str:
    if setting.kind.secret:
        return "an empty value" if not raw.strip() else "a value (hidden)"
    return raw if raw.strip() == raw and raw else repr(raw)


def parse_settings(args: Mapping[str, str | list[str] | None], env: Mapping[str, str]) -> Settings:
    """Settings from raw flag values (None: not given) falling back to `env`; raises SettingError."""
    values: dict[str, Any] = {}
    for setting in _FLAGS:
        given = args.get(setting.name) if setting.flag else None
        raw = setting.kind.separator.join(given) if isinstance(given, list) else given
        from_flag = raw is not None
        if raw is None:
            raw = env.get(setting.env)
            if raw is None or (raw == "" and setting.kind.empty_env_is_unset):
                continue
        try:
            values[setting.name] = setting.kind.parse(raw)
        except ValueError as error:
            raise SettingError(f"{setting.source(from_flag)}: {error}, got {_shown(setting, raw)}") from None
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    """Settings valid alone that cannot work together; raises SettingError."""
    if settings.models and settings.model_name is not None:
        raise SettingError(
            "--model/MODELS and MODEL_NAME: give the models with one of them, "
            f"got both (MODEL_NAME={settings.model_name})"
        )
    if settings.api_key is not None and settings.api_keys_file is not None:
        raise SettingError(
            "--api-key and --api-keys-file: give the keys with one of them (a line 'default KEY' "
            "in the file is what --api-key means), got both"
        )
    if settings.quantize == "int8" and settings.backend == "torch":
        raise SettingError("--quantize int8: needs --backend openvino, onnx or auto, got --backend torch")
    if settings.dtype != "auto" and settings.backend != "torch":
        raise SettingError(
            f"--dtype {settings.dtype}: needs --backend torch (openvino and onnx take --quantize), "
            f"got --backend {settings.backend}"
        )


def cache_over_limit(settings: Settings, memory_limit: int | None) -> str | None:
    """Why the embedding caches cannot fit in `memory_limit` bytes (the cgroup's), or None: every
    model in every worker keeps its own cache of up to --cache-size bytes."""
    if memory_limit is None or not settings.cache_size:
        return None
    models, workers = len(settings.model_specs()), settings.workers
    total = settings.cache_size * models * workers
    if total <= memory_limit:
        return None
    return (
        f"--cache-size: {settings.cache_size} bytes x {models} model(s) x {workers} worker(s) = {total} "
        f"bytes exceeds the cgroup memory limit of {memory_limit} bytes"
    )


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Parse flags (falling back to the environment) into validated Settings.

    Exits with status 2 and one line on stderr naming the first setting that cannot be used."""
    env = os.environ if env is None else env
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(env)
    if isinstance(parser, _Parser):
        parser.json_errors = _asks_for_json(argv, env)
    args = parser.parse_args(argv)
    try:
        return parse_settings(vars(args), env)
    except SettingError as error:
        parser.error(str(error))


def settings_table() -> tuple[Setting, ...]:
    """Every setting, flags and environment-only ones (for tests and docs)."""
    return _FLAGS


__all__ = [
    "DEBUG_MODEL",
    "DEFAULT_MODEL_LABEL",
    "Choice",
    "Fraction",
    "Integer",
    "ModelList",
    "ModelSpec",
    "PromptList",
    "Seconds",
    "Setting",
    "SettingError",
    "Settings",
    "Size",
    "Switch",
    "Text",
    "TokenBudget",
    "build_parser",
    "cache_over_limit",
    "load_settings",
    "parse_settings",
    "settings_table",
    "version",
]
