"""The API keys file parser and the key ring, alone: every way a file is refused, and who a key names."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from trio_infer.config import Settings, load_settings, parse_settings, settings_table
from trio_infer.core import errors
from trio_infer.core.priority import ANONYMOUS, LABELS, Priority
from trio_infer.http.callers import SINGLE_KEY_CALLER, KeyRing, key_ring
from trio_infer.http.keys_file import KeysFileError, key_digest, parse_keys, read_keys_file


def sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


GOOD = f"""\
# search front-end and the nightly indexer
search    plain-key-1
indexer   {sha256("hashed-key-2")}   bulk   # re-indexes at night

	tabbed	plain-key-3	Interactive
"""


def test_a_file_gives_its_callers_in_order_with_their_classes() -> None:
    keys = parse_keys(GOOD, "keys.txt")
    assert [(key.name, key.priority) for key in keys] == [
        ("search", None),
        ("indexer", Priority.BULK),
        ("tabbed", Priority.INTERACTIVE),
    ]
    assert keys[0].digest == hashlib.sha256(b"plain-key-1").digest()
    assert keys[1].digest == hashlib.sha256(b"hashed-key-2").digest()  # the hash, not the text


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("alice\n", 1, "caller 'alice' has no key"),
        ("alice   # key forgotten\n", 1, "caller 'alice' has no key"),
        ("# header\nalice k bulk extra\n", 2, "4 fields, expected NAME KEY [PRIORITY]"),
        ("alice k urgent\n", 1, "the priority must be one of interactive, bulk, got 'urgent'"),
        ("alice k1\nbob k2\nalice k3\n", 3, "the name 'alice' is already given on line 1"),
        ("alice k1\n\nbob k1\n", 3, "caller 'bob': the same key is already given on line 1"),
        (f"alice k1\nbob {sha256('k1')}\n", 2, "the same key is already given on line 1"),
        ("alice sha256:\n", 1, "empty key"),
        ('alice ""\n', 1, "empty key"),
        ("alice sha256:abc123\n", 1, "a hashed key is sha256: and 64 hex digits, got 6 characters"),
        ("alice sha256:" + "g" * 64 + "\n", 1, "64 hex digits"),
        ("al ice k\n", 1, "the priority must be one of"),  # three fields: 'k' is no class
        ("al/ice k\n", 1, "the name 'al/ice' must match [A-Za-z0-9_.-]{1,64}"),
        ("a" * 65 + " k\n", 1, "must match"),
        ('"alice" k\n', 1, "must match"),
        ("anonymous k\n", 1, "'anonymous' is reserved"),
        ("alice kéy\n", 1, "a key must be printable ASCII"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(KeysFileError) as caught:
        parse_keys(text, "/etc/keys.txt")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"/etc/keys.txt line {line}: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # and another\n"])
def test_a_file_without_a_caller_is_refused(text: str) -> None:
    with pytest.raises(KeysFileError, match=r"^keys: no caller"):
        parse_keys(text, "keys")


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(KeysFileError, match=rf"^{path}: cannot read it: No such file"):
        read_keys_file(str(path))


def test_the_file_is_read_as_utf8_with_or_without_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_bytes(b"\xef\xbb\xbfalice k1\n")
    assert [key.name for key in read_keys_file(str(path))] == ["alice"]


def ring(text: str, default: Priority = Priority.INTERACTIVE) -> KeyRing:
    return KeyRing(parse_keys(text, "keys"), default)


def test_a_key_names_its_caller_and_its_default_class() -> None:
    keys = ring(GOOD, default=Priority.BULK)
    assert keys.guarded
    assert keys.names == ("search", "indexer", "tabbed")
    search = keys.identify("Bearer plain-key-1")
    assert (search.name, search.priority) == ("search", Priority.BULK)  # no class of its own
    indexer = keys.identify("bearer  hashed-key-2 ")  # scheme case-insensitive, spaces around
    assert (indexer.name, indexer.priority) == ("indexer", Priority.BULK)
    assert keys.identify("Bearer plain-key-3").priority is Priority.INTERACTIVE


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic plain-key-1",
        "plain-key-1",
        sha256("hashed-key-2"),
    ],
)
def test_a_missing_or_wrong_key_is_unauthorized(authorization: str | None) -> None:
    with pytest.raises(errors.Unauthorized):
        ring(GOOD).identify(authorization)
    # A hashed entry is matched by the key, never by its hash.
    with pytest.raises(errors.Unauthorized):
        ring(GOOD).identify(f"Bearer {sha256('hashed-key-2')}")


def test_without_a_key_everyone_is_anonymous_with_the_default_class() -> None:
    keys = key_ring(Settings(default_priority="bulk"))
    assert not keys.guarded
    assert keys.names == (ANONYMOUS,)
    anyone = keys.identify("Bearer whatever")
    assert (anyone.name, anyone.priority) == (ANONYMOUS, Priority.BULK)


def test_api_key_is_the_one_caller_default() -> None:
    keys = key_ring(Settings(api_key="s3cret"))
    assert keys.guarded and keys.names == (SINGLE_KEY_CALLER,)
    assert keys.identify("Bearer s3cret").name == "default"
    assert key_digest(b"s3cret") == hashlib.sha256(b"s3cret").digest()
    with pytest.raises(errors.Unauthorized):
        keys.identify("Bearer s3cre")


def test_key_ring_reads_the_file_of_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("alice k1 bulk\n")
    keys = key_ring(Settings(api_keys_file=str(path)))
    assert keys.identify("Bearer k1").priority is Priority.BULK


# ------------------------------------------------------------------------------------------ settings
def test_default_priority_offers_exactly_the_classes() -> None:
    setting = next(s for s in settings_table() if s.name == "default_priority")
    assert setting.kind.choices == LABELS  # type: ignore[attr-defined]
    assert Settings().default_priority == "interactive"
    assert parse_settings({}, {"DEFAULT_PRIORITY": "Bulk"}).default_priority == "bulk"
    assert parse_settings({"default_priority": "bulk"}, {}).default_priority == "bulk"


def test_an_unknown_default_priority_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(["--default-priority", "urgent"], env={})
    assert caught.value.code == 2
    assert "--default-priority: must be one of interactive, bulk, got urgent" in capsys.readouterr().err


def test_api_key_and_api_keys_file_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(["--api-key", "k", "--api-keys-file", "/etc/keys.txt"], env={})
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--api-key and --api-keys-file: give the keys with one of them" in err
    assert len(err.strip().splitlines()) == 1
    settings = parse_settings({}, {"API_KEYS_FILE": "/etc/keys.txt"})
    assert replace(settings, api_key=None).api_keys_file == "/etc/keys.txt"
