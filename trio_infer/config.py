"""Service settings: one frozen dataclass, filled from flags that fall back to environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_MODEL_LABEL = "sentence-transformers/all-MiniLM-L6-v2"
DEBUG_MODEL = "debug"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8001
    max_batch_size: int = 32
    batch_timeout: float = 0.01
    num_batching_workers: int = 2
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
    backend: str = "auto"  # auto, torch, openvino or onnx
    quantize: str = "none"  # none or int8
    dtype: str = "auto"  # torch's dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16
    cache_dir: str = "~/.cache/trio-infer"  # exported models and auto's decision

    @property
    def model_label(self) -> str:
        """The model name reported to clients."""
        return self.model_name or DEFAULT_MODEL_LABEL


# (flag, environment variable, type, help). Defaults come from Settings so the two never disagree.
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("host", "HOST", str, "interface to bind"),
    ("port", "PORT", int, "TCP port to bind"),
    ("max_batch_size", "MAX_BATCH_SIZE", int, "most texts in one forward pass"),
    (
        "batch_timeout",
        "BATCH_TIMEOUT",
        float,
        "seconds a collector keeps gathering while the model is busy; an idle model never waits",
    ),
    ("num_batching_workers", "NUM_BATCHING_WORKERS", int, "batch-collector tasks"),
    ("request_timeout", "REQUEST_TIMEOUT", float, "seconds before a request is answered 504"),
    (
        "graceful_timeout",
        "GRACEFUL_TIMEOUT",
        float,
        "seconds the drain may take after SIGTERM; requests left then get 503",
    ),
    (
        "drain_delay",
        "DRAIN_DELAY",
        float,
        "seconds between SIGTERM (readiness off) and closing the listener, for load balancers to notice",
    ),
    ("log_level", "LOG_LEVEL", str, "debug, info, warning or error"),
    ("log_format", "LOG_FORMAT", str, "text or json"),
    (
        "max_batch_tokens",
        "MAX_BATCH_TOKENS",
        str,
        "padded-token budget of one forward pass (count x longest); 'auto' calibrates it at start-up",
    ),
    ("max_queue_size", "MAX_QUEUE_SIZE", int, "texts admitted and waiting; beyond it 503 + Retry-After"),
    ("max_body_size", "MAX_BODY_SIZE", int, "largest request body in bytes (413 beyond)"),
    ("api_key", "API_KEY", str, "require 'Authorization: Bearer <key>' on inference routes"),
    ("workers", "WORKERS", int, "worker processes, each with its own model and batcher"),
    (
        "watchdog_timeout",
        "WATCHDOG_TIMEOUT",
        float,
        "seconds a forward pass may run before /health turns 503",
    ),
    (
        "backend",
        "BACKEND",
        str,
        "auto, torch, openvino or onnx; auto measures which backend is fastest here with torch's vectors",
    ),
    ("quantize", "QUANTIZE", str, "none or int8 (openvino, onnx; costs a little accuracy)"),
    (
        "dtype",
        "DTYPE",
        str,
        "torch backend's dtype: auto (float16 on CUDA, else float32), float32, float16, bfloat16",
    ),
    ("cache_dir", "TRIO_INFER_CACHE_DIR", str, "where exported models and auto's decision are cached"),
)

BACKENDS = ("auto", "torch", "openvino", "onnx")
QUANTIZATIONS = ("none", "int8")
DTYPES = ("auto", "float32", "float16", "bfloat16")

_EPILOG = """\
model selection (environment only):
  MODEL_NAME   sentence-transformers model id or local path (default: the bundled
               all-MiniLM-L6-v2, runs offline); 'debug' serves hash vectors, no model
  HF_TOKEN     token passed to the Hugging Face hub for private models
  DEVICE       torch device (default: cuda if available, else cpu)
"""


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """A parser whose defaults are the environment's values, falling back to Settings' defaults."""
    env = os.environ if env is None else env
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="trio-infer",
        description="Embedding inference server (hypercorn + quart-trio) with token-aware dynamic batching.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, var, kind, text in _FLAGS:
        default: object = getattr(defaults, name)
        if name == "max_batch_tokens":
            default = "auto"
        shown = "none" if default is None else default  # never echo an environment value (API_KEY)
        raw = env.get(var)
        if raw not in (None, ""):
            try:
                default = kind(raw)
            except ValueError:
                parser.error(f"environment variable {var}={raw!r} is not a valid {kind.__name__}")
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=default,
            help=f"{text} [env {var}, default {shown}]",
        )
    return parser


def _parse_tokens(value: str | None) -> int | None:
    if value is None or str(value).lower() in ("", "auto"):
        return None
    tokens = int(value)
    if tokens < 1:
        raise ValueError("--max-batch-tokens must be positive or 'auto'")
    return tokens


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Parse flags (falling back to the environment) into validated Settings; exits with usage on error."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    values = vars(args)
    try:
        values["max_batch_tokens"] = _parse_tokens(values["max_batch_tokens"])
    except ValueError as error:
        parser.error(str(error))
    values["api_key"] = values["api_key"] or None
    values["log_level"] = values["log_level"].lower()
    values["log_format"] = values["log_format"].lower()
    for name in ("backend", "quantize", "dtype"):
        values[name] = values[name].lower()
    settings = Settings(
        **values,
        model_name=env.get("MODEL_NAME") or None,
        hf_token=env.get("HF_TOKEN") or None,
        device=env.get("DEVICE") or None,
    )
    problems = validate(settings)
    if problems:
        parser.error("; ".join(problems))
    return settings


def validate(settings: Settings) -> list[str]:
    """Human-readable reasons the settings cannot work (empty when they can)."""
    problems = []
    if not 0 < settings.port < 65536:
        problems.append("--port must be 1-65535")
    for name in ("max_batch_size", "num_batching_workers", "max_queue_size", "max_body_size", "workers"):
        if getattr(settings, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("request_timeout", "graceful_timeout", "watchdog_timeout"):
        if getattr(settings, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be positive")
    for name in ("batch_timeout", "drain_delay"):
        if getattr(settings, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must not be negative")
    if settings.log_level not in ("debug", "info", "warning", "error", "critical"):
        problems.append("--log-level must be debug, info, warning, error or critical")
    if settings.log_format not in ("text", "json"):
        problems.append("--log-format must be text or json")
    if settings.backend not in BACKENDS:
        problems.append("--backend must be auto, torch, openvino or onnx")
    if settings.quantize not in QUANTIZATIONS:
        problems.append("--quantize must be none or int8")
    if settings.dtype not in DTYPES:
        problems.append("--dtype must be auto, float32, float16 or bfloat16")
    if settings.quantize == "int8" and settings.backend == "torch":
        problems.append("--quantize int8 needs --backend openvino, onnx or auto")
    if settings.dtype != "auto" and settings.backend != "torch":
        problems.append("--dtype needs --backend torch (openvino and onnx take --quantize)")
    if not settings.cache_dir.strip():
        problems.append("--cache-dir must not be empty")
    return problems
