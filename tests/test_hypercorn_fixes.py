"""The hypercorn patches are applied only on the versions they were verified on (issue 9).

Each patch's regression test runs over real sockets elsewhere (tests/test_http2.py,
tests/test_connection_limits.py, and the keep-alive/disconnect checks in tests/test_robustness.py);
here: the guard itself, and that pyproject.toml cannot install a version the patches were not
verified on.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import hypercorn.trio.run
import pytest
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from packaging.requirements import Requirement
from packaging.version import Version

from trio_infer.runtime import hypercorn_fixes
from trio_infer.runtime.connections import GuardedTCPServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test patches in hypercorn is put back afterwards."""
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", hypercorn.trio.run.TCPServer)
    monkeypatch.setattr(H11Protocol, "_check_protocol", H11Protocol._check_protocol)
    monkeypatch.setattr(H2Protocol, "_handle_events", H2Protocol._handle_events)


def test_an_unverified_version_gets_no_patch_and_a_warning_per_patch(
    restore_hypercorn: None, caplog: pytest.LogCaptureFixture
) -> None:
    before = (
        hypercorn.trio.run.TCPServer,
        H11Protocol._check_protocol,
        H2Protocol._handle_events,
    )
    assert hypercorn_fixes.install("0.19.0") == []
    assert (
        hypercorn.trio.run.TCPServer,
        H11Protocol._check_protocol,
        H2Protocol._handle_events,
    ) == before
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == len(hypercorn_fixes.PATCHES)
    assert all("0.19.0" in text and "not applied" in text for text in warnings)


def test_the_installed_version_gets_every_patch(restore_hypercorn: None) -> None:
    assert version("hypercorn") in hypercorn_fixes.VERIFIED_VERSIONS
    assert hypercorn_fixes.install() == [patch.name for patch in hypercorn_fixes.PATCHES]
    assert hypercorn.trio.run.TCPServer is GuardedTCPServer
    assert H2Protocol._handle_events is not hypercorn_fixes._original_handle_events
    # idempotent: a second install wraps hypercorn's original again, not the wrapper
    hypercorn_fixes.install()
    assert H2Protocol._handle_events.__closure__ is not None
    (cell,) = H2Protocol._handle_events.__closure__
    assert cell.cell_contents is hypercorn_fixes._original_handle_events


def _requirement(name: str) -> Requirement:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (requirement,) = [
        Requirement(line) for line in pyproject["project"]["dependencies"] if Requirement(line).name == name
    ]
    return requirement


def test_pyproject_allows_only_verified_hypercorn_minor_versions() -> None:
    specifier = _requirement("hypercorn").specifier
    for verified in hypercorn_fixes.VERIFIED_VERSIONS:
        assert specifier.contains(verified)
    upper = [spec for spec in specifier if spec.operator == "<"]
    assert upper, "hypercorn needs an upper bound: the patches depend on its internals"
    newest = max(Version(v) for v in hypercorn_fixes.VERIFIED_VERSIONS)
    assert Version(upper[0].version) <= Version(f"{newest.major}.{newest.minor + 1}")


def test_h11_is_at_least_0_16() -> None:
    assert not _requirement("h11").specifier.contains("0.15.0")
    assert Version(version("h11")) >= Version("0.16")
