"""Start-up failures a new user meets first: a busy port, a bad host. One line, non-zero exit, and
nothing loaded first (the real model would log its loading; these runs must not get that far)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from tests.serverproc import ROOT, SETTINGS_ENV, free_port

TIMEOUT = 120  # generous: a loaded machine; the bind check itself runs before any heavy import


def run(*args: str, model: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    if model is not None:
        env["MODEL_NAME"] = model
    return subprocess.run(
        [sys.executable, "-m", "trio_infer", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by a listening socket of this test process (a real one, not a mock)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_busy_port_is_one_line_naming_the_address_before_the_model_loads(
    busy_port: int, workers: str
) -> None:
    # The bundled real model: had the process loaded it before binding, its log would say so.
    result = run("--host", "127.0.0.1", "--port", str(busy_port), "--workers", workers)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_unresolvable_host_is_one_line() -> None:
    port = free_port()
    result = run("--host", "no-such-host.invalid", "--port", str(port), model="debug")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on no-such-host.invalid:{port}: cannot resolve host" in lines[0]


def test_address_not_on_this_machine_is_one_line() -> None:
    port = free_port()
    result = run("--host", "192.0.2.1", "--port", str(port), model="debug")  # TEST-NET-1
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if f"192.0.2.1:{port}: " in line
    ]


def test_debug_level_adds_the_traceback_and_json_stays_json(busy_port: int) -> None:
    debug = run("--host", "127.0.0.1", "--port", str(busy_port), "--log-level", "debug", model="debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    as_json = run("--host", "127.0.0.1", "--port", str(busy_port), "--log-format", "json", model="debug")
    assert as_json.returncode == 1
    (entry,) = [orjson.loads(line) for line in as_json.stderr.splitlines()]
    assert entry["level"] == "critical" and f"127.0.0.1:{busy_port}" in entry["message"]


def test_no_other_process_can_join_the_port() -> None:
    """The service's socket has no SO_REUSEPORT: a second listener asking for it is refused."""
    from trio_infer.runtime.listener import bind_listener

    with bind_listener("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                intruder.bind(("127.0.0.1", port))


@pytest.mark.parametrize(("args", "state"), [((), "off"), (("--api-key", "k3y"), "on, 1 caller")])
def test_start_log_says_whether_authentication_is_on(args: tuple[str, ...], state: str) -> None:
    from tests.serverproc import ServerProcess

    with ServerProcess(args=args) as server:
        assert server.stop() == 0  # log lines are buffered until the process flushes them at exit
        log = server.log()
    assert f"(authentication: {state}); loading 1 model" in log
    assert f"authentication: {state})" in log.split("ready on", 1)[1]
    assert "k3y" not in log


def test_settings_in_the_shipped_manifests_are_valid() -> None:
    """The environment the compose file and the Kubernetes manifests set passes the same checks."""
    import yaml

    from trio_infer.config import parse_settings, settings_table

    known = {setting.env for setting in settings_table()}
    envs: list[dict[str, str]] = []
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        envs.append({key: str(value) for key, value in env.items()})
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                envs.append({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    checked = 0
    for env in envs:
        settings_env = {key: value for key, value in env.items() if key in known and "${" not in value}
        parse_settings({}, settings_env)  # raises SettingError naming a bad value
        checked += len(settings_env)
    assert checked > 0
