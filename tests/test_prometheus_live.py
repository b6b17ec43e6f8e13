"""A real Prometheus scraping a real trio-infer: the dashboard's queries and the alert rules work on
the metrics the service actually exposes.

Starts `python -m trio_infer` serving two models (`--model debug --model second=debug`, one process,
a small queue so bursts are rejected) and the Debian `prometheus` binary scraping it every second
with `prometheus/alerts.yml` loaded. Sends ~25 s of mixed load that produces every outcome the
service can produce without a failing model: 200, 422 and 404 answers (an unknown route, an unknown
model), items that succeed, are rejected (queue full / predicted wait beyond a tiny
X-Request-Timeout), time out (short X-Request-Timeout) and are cancelled (client hangs up), most on
the default model and a steady stream on the second. Then, through Prometheus' HTTP API:

* the target is up and every alert rule is loaded and evaluates without error;
* every batcher_* series carries a `model` label whose values are exactly the configured names
  (a request for an unknown model adds none), and both models' traffic is counted apart;
* every PromQL expression of every dashboard panel and every alert rule parses and evaluates, with
  the dashboard's `model` variable on All;
* every panel query returns data with at least one finite value (what Grafana can plot), and with
  the variable on one model, the per-model panels show that model only.

Skipped only when the `prometheus` binary is not installed (`make system-deps` installs it).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from tests.serverproc import (
    ROOT,
    ServerProcess,
    free_port,
    json_request,
    metrics,
    post_json,
    request,
)

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "grafana" / "dashboards" / "trio-infer.json"
ALERTS = ROOT / "prometheus" / "alerts.yml"
JOB = "trio-infer"

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian package 'prometheus')"
)

LOAD_SECONDS = 25.0
START_TIMEOUT = 120.0
# Grafana's built-in interval variables; the dashboard's windows are fixed [1m] today.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "1m"}
GRAFANA_VARIABLES |= {"${__interval}": "1m", "$__range": "1m", "${__range}": "1m"}
# The served models: the default (named by its source) and a second one under an alias.
DEFAULT_MODEL = "debug"
SECOND_MODEL = "second"
MODELS = (DEFAULT_MODEL, SECOND_MODEL)
# The dashboard's own variables; `model` on "All" is its allValue.
ALL = ".*"


# --------------------------------------------------------------------------------- the expressions
def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_queries(model: str = ALL) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with Grafana variables substituted) for every panel target;
    `model` is the value of the dashboard's model variable (All by default)."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard.get("templating", {}).get("list", [])}
    assert set(variables) == {"model"}, f"substitute the dashboard's variables here: {sorted(variables)}"
    assert variables["model"].get("allValue") == ALL
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            expr = expr.replace("${model}", model).replace("$model", model)
            assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
            queries.append((f"{panel['title']} / {target.get('refId', '?')}", expr))
    return queries


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def test_expressions_found() -> None:
    """Guards the live test against silently checking nothing (runs without prometheus too)."""
    assert len(dashboard_queries()) >= 20
    assert len(alert_expressions()) >= 5


# ------------------------------------------------------------------------------------- processes
@pytest.fixture
def service() -> Iterator[ServerProcess]:
    proc = ServerProcess(
        args=[
            *("--max-queue-size", "32", "--graceful-timeout", "5"),
            *("--model", DEFAULT_MODEL, "--model", f"{SECOND_MODEL}={DEFAULT_MODEL}"),
        ],
        env={"MODEL_NAME": ""},  # ServerProcess sets MODEL_NAME=debug; --model replaces it
    )
    proc.start(timeout=START_TIMEOUT)  # (not `with proc.start()`: __enter__ would start a second one)
    try:
        yield proc
    finally:
        proc.stop(timeout=30)
        proc.log_path.unlink(missing_ok=True)


@pytest.fixture
def prometheus(service: ServerProcess, tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{service.port}"], "labels": {"service": "trio-infer"}}
                ],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready:\n{log_path.read_text()[-5000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------- load
async def apply_load(port: int, seconds: float) -> dict[str, int]:
    """Mixed traffic for `seconds`; returns how many of each kind of answer it got."""
    seen: dict[str, int] = {}
    end = trio.current_time() + seconds

    def count(kind: str) -> None:
        seen[kind] = seen.get(kind, 0) + 1

    async def embed(text: str, time_limit: str | None = None, model: str | None = None) -> None:
        headers = {"X-Request-Timeout": time_limit} if time_limit else {}
        body = {"input_text": text} if model is None else {"input_text": text, "model": model}
        response = await post_json(port, "/embed", body, headers)
        count(str(response.status))
        if model is not None and response.status == 200:
            count(f"answered by {response.json()['model']}")

    async def steady(worker: int) -> None:  # successes of mixed lengths
        i = 0
        while trio.current_time() < end:
            await embed(f"steady {worker} {i} " + "word " * (i % 40))
            i += 1
            await trio.sleep(0.02)

    async def second_model() -> None:  # successes of the second model, named by its alias
        i = 0
        while trio.current_time() < end:
            await embed(f"second {i} " + "word " * (i % 20), model=SECOND_MODEL)
            i += 1
            await trio.sleep(0.05)

    async def invalid() -> None:  # 422, 404 (route), 404 (model)
        while trio.current_time() < end:
            response = await post_json(port, "/embed", {"text": "wrong field"})
            count(str(response.status))
            response = await request(port, json_request("/no-such-route", {}))
            count(str(response.status))
            response = await post_json(port, "/embed", {"input_text": "x", "model": "no-such-model"})
            count(f"{response.status} model")
            await trio.sleep(0.5)

    async def hang_up() -> None:  # cancelled: the client leaves before its answer
        i = 0
        while trio.current_time() < end:
            i += 1  # a text of its own: one computed before would be answered from the cache at once
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(json_request("/embed", {"input_text": f"abandoned {i} " + "word " * 90}))
            await stream.aclose()
            count("hung up")
            await trio.sleep(0.3)

    async def bursts() -> None:  # rejected (queue of 32 full; tiny deadline) and timeout
        round_ = 0
        while trio.current_time() < end:
            for time_limit in (None, "0.000001", "0.003", "0.005"):
                round_ += 1  # texts of their own: a text sent before is answered from the cache
                async with trio.open_nursery() as nursery:
                    for i in range(60):
                        nursery.start_soon(embed, f"burst {round_}.{i} " + "word " * 80, time_limit)
                await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        for worker in range(3):
            nursery.start_soon(steady, worker)
        nursery.start_soon(second_model)
        nursery.start_soon(invalid)
        nursery.start_soon(hang_up)
        nursery.start_soon(bursts)
    return seen


# ------------------------------------------------------------------------------------------- test
@pytest.fixture
async def prom(prometheus: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=prometheus, timeout=30) as client:
        yield client


async def query(client: httpx.AsyncClient, expr: str) -> dict[str, Any]:
    response = await client.get("/api/v1/query", params={"query": expr})
    body: dict[str, Any] = response.json()
    return body


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = trio.current_time() + within
    while not await check():
        if trio.current_time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await trio.sleep(0.5)


async def scraped_after_the_load(prom: httpx.AsyncClient, port: int) -> bool:
    """Prometheus' latest batcher_requests_total equals the service's own, for every status: the last
    of the load is in (the load is over, so the counters no longer move)."""
    own = {
        name: value
        for name, value in (await metrics(port)).items()
        if name.startswith("batcher_requests_total{")
    }
    result = (await query(prom, f'batcher_requests_total{{job="{JOB}"}}'))["data"]["result"]
    scraped = {
        'batcher_requests_total{{model="{model}",priority="{priority}",status="{status}"}}'.format(
            **item["metric"]
        ): float(item["value"][1])
        for item in result
    }
    return bool(own) and scraped == own


@needs_prometheus
@pytest.mark.e2e
@pytest.mark.slow
async def test_dashboard_and_alerts_against_live_prometheus(
    service: ServerProcess, prom: httpx.AsyncClient
) -> None:
    async def target_up() -> bool:
        result = (await query(prom, f'up{{job="{JOB}"}}'))["data"]["result"]
        return bool(result) and result[0]["value"][1] == "1"

    await wait_until(target_up, 60, "Prometheus to scrape trio-infer")

    seen = await apply_load(service.port, LOAD_SECONDS)
    print(f"\nanswers during the load: {seen}")
    assert seen.get("200", 0) > 100 and seen.get("422", 0) > 0 and seen.get("404", 0) > 0, seen
    assert seen.get("503", 0) > 0 and seen.get("504", 0) > 0, seen
    answered_by = {kind for kind in seen if kind.startswith("answered by ")}
    assert answered_by == {f"answered by {SECOND_MODEL}"}, seen  # the answer names the model asked for
    assert seen[f"answered by {SECOND_MODEL}"] > 20 and seen.get("404 model", 0) > 0, seen
    await wait_until(
        lambda: scraped_after_the_load(prom, service.port), 60, "Prometheus to scrape the end of the load"
    )

    # Every outcome the load produced reached Prometheus.
    outcomes = (await query(prom, "sum by (status) (increase(batcher_requests_total[5m]))"))["data"]
    by_status = {item["metric"]["status"]: float(item["value"][1]) for item in outcomes["result"]}
    print(f"batcher items by status (Prometheus, increase over 5m): {by_status}")
    for status in ("success", "rejected", "timeout", "cancelled"):
        assert by_status.get(status, 0) > 0, by_status
    http = (await query(prom, "sum by (status) (increase(http_requests_total[5m]))"))["data"]["result"]
    http_codes = {item["metric"]["status"] for item in http}
    assert {"200", "404", "422", "503", "504"} <= http_codes, http_codes

    # The model label: on every batcher_* series, only the configured names, each model counted apart.
    labelled = (await query(prom, 'count by (__name__, model) ({__name__=~"batcher_.*"})'))["data"]
    families: dict[str, set[str | None]] = {}
    for item in labelled["result"]:
        families.setdefault(item["metric"]["__name__"], set()).add(item["metric"].get("model"))
    assert len(families) >= 20, sorted(families)  # 10 families, histograms as _bucket/_sum/_count
    for name, models in families.items():
        assert models == set(MODELS), f"{name}: model label values {models}"
    per_model = await query(prom, 'sum by (model) (increase(batcher_requests_total{status="success"}[5m]))')
    success = {item["metric"]["model"]: float(item["value"][1]) for item in per_model["data"]["result"]}
    print(f"successful items by model (Prometheus, increase over 5m): {success}")
    assert set(success) == set(MODELS) and all(value > 0 for value in success.values()), success
    for info in ("trio_infer_model_info", "trio_infer_backend_info", "trio_infer_max_batch_tokens"):
        result = (await query(prom, info))["data"]["result"]
        assert {item["metric"]["model"] for item in result} == set(MODELS), (info, result)

    problems = []
    for name, expr in dashboard_queries():
        body = await query(prom, expr)
        if body.get("status") != "success":
            problems.append(f"panel {name}: {expr}\n  -> {body.get('errorType')}: {body.get('error')}")
            continue
        values = [float(item["value"][1]) for item in body["data"]["result"]]
        if not any(math.isfinite(value) for value in values):
            problems.append(f"panel {name}: {expr}\n  -> no plottable data: {body['data']['result']}")
    for name, expr in alert_expressions():
        body = await query(prom, expr)
        if body.get("status") != "success":
            problems.append(f"alert {name}: {expr}\n  -> {body.get('errorType')}: {body.get('error')}")
    assert not problems, "\n".join(problems)

    # The model variable on one model: the per-model panels show that model's series only.
    filtered = 0
    for (name, expr), (_, expr_all) in zip(dashboard_queries(SECOND_MODEL), dashboard_queries(), strict=True):
        if expr == expr_all:
            continue  # a panel the variable does not filter (HTTP, process)
        body = await query(prom, expr)
        assert body.get("status") == "success", (name, expr, body)
        result = body["data"]["result"]
        models = {item["metric"].get("model") for item in result}
        if models != {SECOND_MODEL} or not any(math.isfinite(float(item["value"][1])) for item in result):
            problems.append(f"panel {name} with model={SECOND_MODEL}: {expr}\n  -> {result}")
        filtered += 1
    assert not problems, "\n".join(problems)
    assert filtered >= 20, filtered

    # The rule file loaded and every rule has been evaluated without error.
    expected = {name for name, _ in alert_expressions()}

    async def rules_evaluated() -> bool:
        groups = (await prom.get("/api/v1/rules")).json()["data"]["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert expected <= set(rules), set(rules)
        for rule in rules.values():
            assert rule["health"] != "err", rule
        return all(rules[name]["health"] == "ok" for name in expected)

    await wait_until(rules_evaluated, 60, "every alert rule to be evaluated")
    firing = [
        alert["labels"]["alertname"] for alert in (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]
    ]
    print(f"alerts pending or firing after the load: {sorted(set(firing))}")
    assert "TrioInferDown" not in firing
