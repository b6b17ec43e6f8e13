"""Who sent a request: the caller an `Authorization` header names, and the class its requests get.

A `KeyRing` is the configuration of one moment, immutable: the callers by the SHA-256 digest of their
key (`--api-keys-file`, see keys_file.py), the one caller `default` of `--api-key`, or none at all,
when every request is the caller `anonymous`. `Callers` holds the ring in force; a reload replaces it
with one assignment on the event loop, so a request sees either the old ring or the new one, whole,
and the requests already admitted are unaffected (they carry their caller's name, not the ring).

The presented key is hashed and looked up by its digest; no key is ever compared byte by byte. The
time a lookup takes can depend only on the digest of what was sent, which tells a client nothing
about a configured key (finding a key from its digest is a preimage attack on SHA-256).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Settings
from ..core import errors
from ..core.priority import ANONYMOUS, Priority
from .keys_file import CallerKey, key_digest, read_keys_file

# The name of the one caller that `--api-key` configures.
SINGLE_KEY_CALLER = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller's name (the `caller` metric label, what `service.admit` gets) and the class of its
    requests that send no `X-Priority`."""

    name: str
    priority: Priority


class KeyRing:
    """The callers known by their key at one moment; with no key at all, everyone is `anonymous`."""

    __slots__ = ("_by_digest", "anonymous", "names")

    def __init__(self, keys: Iterable[CallerKey], default_priority: Priority) -> None:
        self._by_digest = {
            # `is None`, not `or`: INTERACTIVE is 0, falsy
            key.digest: Caller(key.name, default_priority if key.priority is None else key.priority)
            for key in keys
        }
        # The caller of requests that need no key: open routes, and every route when none is configured.
        self.anonymous = Caller(ANONYMOUS, default_priority)
        # Every name a request's caller can have: what the `caller` metric label may hold.
        self.names: tuple[str, ...] = (
            tuple(caller.name for caller in self._by_digest.values()) if self._by_digest else (ANONYMOUS,)
        )

    @property
    def guarded(self) -> bool:
        """Whether a key is required (on every route that is not open)."""
        return bool(self._by_digest)

    def identify(self, authorization: str | None) -> Caller:
        """The caller whose key `authorization` (`Bearer <key>`) carries; `anonymous` when no key is
        configured. Raises Unauthorized for a missing or unknown key."""
        if not self._by_digest:
            return self.anonymous
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer":
            # The header was decoded as latin-1: encoding it back gives the bytes the client sent.
            caller = self._by_digest.get(key_digest(token.strip().encode("latin-1")))
            if caller is not None:
                return caller
        raise errors.Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")


def key_ring(settings: Settings) -> KeyRing:
    """The ring the settings configure: `--api-keys-file` (read now: blocking I/O, raises
    KeysFileError), else `--api-key` as the one caller `default`, else no key."""
    default = Priority.parse(settings.default_priority)
    if settings.api_keys_file is not None:
        return KeyRing(read_keys_file(settings.api_keys_file), default)
    if settings.api_key is not None:
        return KeyRing([CallerKey(SINGLE_KEY_CALLER, key_digest(settings.api_key.encode()))], default)
    return KeyRing((), default)


class Callers:
    """The key ring in force, shared by the request pipeline (which reads it per request) and the
    task that reloads it (which replaces it whole)."""

    __slots__ = ("ring",)

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def identify(self, authorization: str | None) -> Caller:
        return self.ring.identify(authorization)

    @property
    def names(self) -> tuple[str, ...]:
        return self.ring.names


__all__ = ["SINGLE_KEY_CALLER", "Caller", "Callers", "KeyRing", "key_ring"]
