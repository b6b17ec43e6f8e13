"""Log lines a reader can trust: control characters escaped in text, the worker's number on every
line, Python warnings through the one handler."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import orjson
import pytest

from trio_infer.runtime.logs import (
    JSONFormatter,
    TextFormatter,
    adopt_library_loggers,
    configure_logging,
    escape_controls,
)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("trio_infer.test", logging.INFO, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_text_format_escapes_control_characters_from_clients() -> None:
    forged = "GET /x\n2026-01-01 00:00:00,000 INFO trio_infer: forged\r\x1b[2J\x00\u2028end"
    line = TextFormatter().format(record("%s", forged, request_id="id\nsecond"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "\\n2026-01-01" in line and "\\x1b[2J" in line and "\\x00" in line and "\\u2028end" in line
    assert line.endswith("request_id=id\\nsecond")


def test_text_traceback_lines_are_indented_so_none_looks_like_a_record() -> None:
    try:
        raise ValueError("bad\nINFO forged record")
    except ValueError:
        import sys

        entry = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = TextFormatter().format(entry).splitlines()
    assert lines[0].endswith("failed")
    assert all(line.startswith("    ") for line in lines[1:]) and len(lines) > 2


def test_plain_text_is_unchanged() -> None:
    assert escape_controls("POST /embed 200 1.2ms") == "POST /embed 200 1.2ms"


def test_every_line_carries_the_worker_number() -> None:
    assert orjson.loads(JSONFormatter(worker=2).format(record("hi")))["worker"] == 2
    assert "worker" not in orjson.loads(JSONFormatter().format(record("hi")))
    assert "[worker 3]" in TextFormatter(worker=3).format(record("hi"))
    assert "[supervisor]" in TextFormatter(worker=0).format(record("hi"))


def test_python_warnings_are_json_records(restore_root: None, capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", worker=1)
    adopt_library_loggers()  # as a real-model start does: a model loaded earlier left transformers' handler
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # libraries imported earlier in the suite may filter UserWarning
        warnings.warn("a library complains", UserWarning, stacklevel=1)
    logging.getLogger("transformers").warning("from a library logger")
    err = capfd.readouterr().err
    entries = [orjson.loads(line) for line in err.splitlines()]
    assert [entry["logger"] for entry in entries] == ["py.warnings", "transformers"], err
    assert "a library complains" in entries[0]["message"] and all(e["worker"] == 1 for e in entries)


def test_hugging_face_messages_are_printed_once_in_our_format(
    restore_root: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """huggingface_hub and transformers attach stderr handlers of their own: adopted, a message is
    one JSON line instead of a plain line plus a JSON one (or a plain one only)."""
    from trio_infer.runtime.logs import adopt_library_loggers

    configure_logging("info", "json")
    adopt_library_loggers()
    logging.getLogger("huggingface_hub.file_download").warning("cannot reach the hub")
    logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
    lines = capfd.readouterr().err.splitlines()
    assert [orjson.loads(line)["message"] for line in lines] == [
        "cannot reach the hub",
        "some weights were not used",
    ], lines
