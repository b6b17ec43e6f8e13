"""The API keys file (`--api-keys-file`): who the callers are, one per line.

    # NAME       KEY                                                                      [PRIORITY]
    search-app   sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    indexer      k3y-0f-the-1ndexer                                                        bulk

Each line is `NAME KEY [PRIORITY]`, fields separated by spaces or tabs. Blank lines are skipped; a
field starting with `#` starts a comment that runs to the end of the line (so a key cannot begin
with `#`).

- NAME: `[A-Za-z0-9_.-]{1,64}`, unique; it is the `caller` metric label, so the label only ever holds
  names an operator wrote. `anonymous` is reserved (requests when no key is configured).
- KEY: either `sha256:<64 hex digits>`, the SHA-256 of the key the client sends (the file then holds
  no secret: `printf %s "$KEY" | sha256sum`), or the key itself, printable ASCII. Unique: a plain
  key and the hash of the same key are the same key.
- PRIORITY: the class of the caller's requests that send no `X-Priority` (`interactive` or `bulk`);
  absent: `--default-priority`.

Parsing is pure (`parse_keys`); `read_keys_file` adds the I/O. A file that cannot be used raises
KeysFileError naming the file and the line, whatever else the file holds: a file is taken whole or
not at all.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.priority import ANONYMOUS, Priority

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HASHED = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_FORMAT = "NAME KEY [PRIORITY]"


@dataclass(frozen=True, slots=True)
class CallerKey:
    """One caller: its name, the SHA-256 digest of its key, and its default class (None: the
    server's `--default-priority`)."""

    name: str
    digest: bytes
    priority: Priority | None = None


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and, when one is to blame, the line."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


def key_digest(key: bytes) -> bytes:
    """The SHA-256 digest a key is known by: of its bytes, as sent in `Authorization`."""
    return hashlib.sha256(key).digest()


def _key(field: str) -> bytes:
    """The digest a KEY field stands for; ValueError saying why it cannot be one."""
    if field.lower().startswith(HASHED):
        hexdigest = field[len(HASHED) :]
        if not hexdigest:
            raise ValueError(f"empty key: {HASHED} must be followed by the key's 64 hex digits")
        if not _HEX_DIGEST.fullmatch(hexdigest):
            raise ValueError(f"a hashed key is {HASHED} and 64 hex digits, got {len(hexdigest)} characters")
        return bytes.fromhex(hexdigest)
    if not (field.isascii() and field.isprintable()):
        raise ValueError("a key must be printable ASCII (it is sent in the Authorization header)")
    if field in ('""', "''"):
        raise ValueError("empty key")
    return key_digest(field.encode())


def _fields(line: str) -> list[str]:
    fields = line.split()
    for index, field in enumerate(fields):
        if field.startswith("#"):
            return fields[:index]
    return fields


def parse_keys(text: str, source: str) -> tuple[CallerKey, ...]:
    """Every caller of a keys file's `text`, in file order. `source` names the file in errors.

    Raises KeysFileError at the first line that cannot be used (too few or too many fields, a bad
    name, an empty or malformed key, an unknown priority, a name or key given twice) or when the
    file names no caller at all (that would refuse every request: surely not what was meant)."""
    callers: list[CallerKey] = []
    lines_by_name: dict[str, int] = {}
    lines_by_digest: dict[bytes, int] = {}
    number = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = _fields(line)
        if not fields:
            continue
        if len(fields) == 1:
            raise KeysFileError(source, f"caller {fields[0]!r} has no key (each line is {_FORMAT})", number)
        if len(fields) > 3:
            raise KeysFileError(source, f"{len(fields)} fields, expected {_FORMAT}", number)
        name, key = fields[0], fields[1]
        if not NAME_PATTERN.fullmatch(name):
            raise KeysFileError(
                source, f"the name {name!r} must match {NAME_PATTERN.pattern} (it is a metric label)", number
            )
        if name == ANONYMOUS:
            raise KeysFileError(
                source, f"the name {ANONYMOUS!r} is reserved for requests without a key", number
            )
        if name in lines_by_name:
            raise KeysFileError(
                source, f"the name {name!r} is already given on line {lines_by_name[name]}", number
            )
        try:
            digest = _key(key)
        except ValueError as error:
            raise KeysFileError(source, f"caller {name!r}: {error}", number) from None
        if digest in lines_by_digest:
            raise KeysFileError(
                source,
                f"caller {name!r}: the same key is already given on line {lines_by_digest[digest]}",
                number,
            )
        priority = None
        if len(fields) == 3:
            try:
                priority = Priority.parse(fields[2])
            except ValueError as error:
                raise KeysFileError(source, f"caller {name!r}: the priority {error}", number) from None
        lines_by_name[name] = number
        lines_by_digest[digest] = number
        callers.append(CallerKey(name, digest, priority))
    if not callers:
        raise KeysFileError(source, f"no caller: give at least one {_FORMAT} line")
    return tuple(callers)


def read_keys_file(path: str) -> tuple[CallerKey, ...]:
    """The callers of the file at `path` (blocking I/O: read it in a thread once serving).
    Raises KeysFileError when it cannot be read or used."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise KeysFileError(path, f"cannot read it: {reason}") from None
    return parse_keys(text, path)


__all__ = [
    "HASHED",
    "NAME_PATTERN",
    "CallerKey",
    "KeysFileError",
    "key_digest",
    "parse_keys",
    "read_keys_file",
]
