"""Static checks of the deployment and observability files (no server, no Docker, no cluster).

The external linters run for real and a test fails when one reports a problem:

* hadolint --failure-threshold warning Dockerfile
* check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
* kubernetes-validate --strict over every manifest in deploy/kubernetes/
* promtool check config / check rules / test rules (skipped only when promtool is not installed)

Besides, the metric names used by the Grafana dashboard, the alert rules and their unit tests must
be ones that docs/CONTRACT.md lists, and the files must agree with one another (datasource uid,
scrape target, mount paths, shutdown budgets).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "CONTRACT.md"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
PROM_DIR = ROOT / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
GRAFANA_DIR = ROOT / "grafana"
DATASOURCE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "trio-infer.json"
K8S_DIR = ROOT / "deploy" / "kubernetes"
MONITORING = ROOT / "MONITORING.md"

DATASOURCE_UID = "prometheus"
SERVICE_PORT = 8001
# Oldest Kubernetes release the manifests must validate against (the tool's newest is checked too).
K8S_MIN_VERSION = "1.30.0"
# Metrics that Prometheus itself produces and the rules may use besides the contract's.
PROMETHEUS_BUILTIN_METRICS = {"up"}
# Labels every scraped series carries (target labels) or that histograms add.
TARGET_LABELS = {"job", "instance", "le", "service"}
REQUEST_STATUSES = {"success", "error", "timeout", "rejected", "cancelled"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Per-model series besides the batcher_* families (each served model has one).
PER_MODEL_INFO = {"trio_infer_model_info", "trio_infer_backend_info", "trio_infer_max_batch_tokens"}
# The dashboard's model variable and what its "All" option stands for.
MODEL_VARIABLE = "model"
MODEL_FILTER = 'model=~"$model"'
MODEL_ALL = ".*"
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
LINT_TIMEOUT_S = 180


# --------------------------------------------------------------------------------------------- helpers
def find_tool(name: str) -> str | None:
    """The tool from this interpreter's bin dir (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    assert path is not None, f"{name} is not installed (it is a dev dependency: pip install -e '.[dev]')"
    return path


def promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; `make system-deps`)")
    return path


def run_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=LINT_TIMEOUT_S, check=False
    )
    return proc


def tool_output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(proc.args)}\nexit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_tool_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, tool_output(proc)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def parse_duration_s(value: str | int | float) -> float:
    """'45s', '1m30s', '2m', 45 -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value.strip(), f"cannot parse duration {value!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


# --------------------------------------------------------------------------------------------- contract
def contract_metrics() -> dict[str, tuple[str, set[str]]]:
    """metric name -> (type, label names), from the "Prometheus metrics" section of CONTRACT.md."""
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(r"^## Prometheus metrics.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "docs/CONTRACT.md has no '## Prometheus metrics' section"
    metrics: dict[str, tuple[str, set[str]]] = {}
    for name, labels, kind in re.findall(
        r"\b([a-z_][a-z0-9_]*)(?:\{([a-z0-9_,\s]*)\})?\s+(counter|gauge|histogram|summary)\b", match.group(1)
    ):
        metrics[name] = (kind, {label.strip() for label in labels.split(",") if label.strip()})
    return metrics


CONTRACT_METRICS = contract_metrics()


def test_contract_metric_list_parsed() -> None:
    # Guards the parser above: the contract names at least these.
    for name in (
        "batcher_requests_total",
        "batcher_request_latency_seconds",
        "batcher_queue_size",
        "http_requests_total",
        "event_loop_lag_seconds",
        "trio_infer_healthy",
        "trio_infer_ready",
    ):
        assert name in CONTRACT_METRICS, f"{name} not parsed from {CONTRACT}: {sorted(CONTRACT_METRICS)}"
    assert CONTRACT_METRICS["batcher_requests_total"] == ("counter", {"model", "priority", "status"})
    assert CONTRACT_METRICS["http_requests_total"][1] == {"route", "method", "status"}


def test_contract_batcher_families_carry_the_model_label() -> None:
    """Several models per process: every batcher_* family and the per-model info series are labelled
    with `model`; the process-wide series are not."""
    batcher = {name for name in CONTRACT_METRICS if name.startswith("batcher_")}
    assert len(batcher) >= 10, sorted(batcher)
    for name in batcher | PER_MODEL_INFO:
        assert "model" in CONTRACT_METRICS[name][1], f"{name} has no model label in {CONTRACT}"
    assert CONTRACT_METRICS["trio_infer_backend_info"][1] == {"model", "backend", "precision"}
    for name in ("http_requests_total", "event_loop_lag_seconds", "trio_infer_ready", "trio_infer_healthy"):
        assert "model" not in CONTRACT_METRICS[name][1], name


# --------------------------------------------------------------------------------------------- PromQL
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS_RE = re.compile(r"\{([^}]*)\}")
_IDENT_RE = re.compile(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, found loosely: identifiers that are not functions,
    aggregation operators, keywords, label names or parts of strings, ranges and durations."""
    e = _MATCHERS_RE.sub(" ", expr)
    e = _STRING_RE.sub(" ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _GROUPING_RE.sub(" ", e)
    names = set()
    for m in _IDENT_RE.finditer(e):
        token = m.group(0)
        if e[m.end() :].lstrip().startswith("("):  # function or aggregation operator
            continue
        if token.lower() in PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def promql_label_names(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in _GROUPING_RE.findall(expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    for matchers in _MATCHERS_RE.findall(expr):
        labels.update(name for name, _op, _value in _MATCHER_RE.findall(matchers))
    return labels


def base_metric(name: str) -> str | None:
    """The contract metric a series name belongs to (histograms add _bucket/_sum/_count), or None."""
    if name in CONTRACT_METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and CONTRACT_METRICS.get(base, ("", set()))[0] == "histogram":
            return base
    return None


def check_expr(expr: str, where: str) -> set[str]:
    """Asserts that the expression only uses contract metrics and their labels; returns the metrics."""
    names = promql_metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = {n for n in names if n not in PROMETHEUS_BUILTIN_METRICS and base_metric(n) is None}
    assert not unknown, f"{where}: metrics not in docs/CONTRACT.md: {sorted(unknown)} in {expr!r}"
    bases = {b for n in names if (b := base_metric(n))}
    allowed_labels = set(TARGET_LABELS)
    for base in bases:
        allowed_labels |= CONTRACT_METRICS[base][1]
    unknown_labels = promql_label_names(expr) - allowed_labels
    assert not unknown_labels, f"{where}: labels {sorted(unknown_labels)} not on {sorted(names)}: {expr!r}"
    for matchers in re.findall(r"batcher_requests_total\s*\{([^}]*)\}", expr):
        for label, op, value in _MATCHER_RE.findall(matchers):
            if label == "status":
                values = set(value.split("|")) if op in ("=~", "!~") else {value}
                assert values <= REQUEST_STATUSES, f"{where}: unknown status {sorted(values)} in {expr!r}"
    return bases


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers text) of every vector selector in `expr`, in order."""
    found = []
    masked = _STRING_RE.sub(lambda m: "_" * len(m.group(0)), expr)  # a string's braces are not a selector
    for m in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", masked):
        name = m.group(1)
        after = masked[m.end() :].lstrip()
        if after.startswith("(") or name.lower() in PROMQL_KEYWORDS or name in _grouped_names(masked):
            continue
        matchers = expr[m.start(2) + 1 : m.end(2) - 1] if m.group(2) else ""
        found.append((name, matchers.strip()))
    return found


def _grouped_names(expr: str) -> set[str]:
    return {label.strip() for group in _GROUPING_RE.findall(expr) for label in group.split(",")}


def model_selectors(expr: str) -> list[tuple[str, str]]:
    """The selectors of `expr` on series that carry the model label."""
    return [
        (name, matchers)
        for name, matchers in selectors(expr)
        if (base := base_metric(name)) is not None and "model" in CONTRACT_METRICS[base][1]
    ]


def test_promql_parser_helpers() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(batcher_request_latency_seconds_bucket{job="x"}[5m])))'
        " > 1e3 and on (instance) up offset 5m"
    )
    assert promql_metric_names(expr) == {"batcher_request_latency_seconds_bucket", "up"}
    assert promql_label_names(expr) == {"job", "le", "instance"}
    assert base_metric("batcher_batch_size_count") == "batcher_batch_size"
    assert base_metric("batcher_queue_size_count") is None  # a gauge has no _count series
    with pytest.raises(AssertionError):
        check_expr("rate(batcher_request_total[1m])", "typo")
    with pytest.raises(AssertionError):
        check_expr('rate(batcher_requests_total{status="failed"}[1m])', "bad status")
    with pytest.raises(AssertionError):
        check_expr("sum by (route) (rate(batcher_requests_total[1m]))", "bad label")
    with pytest.raises(AssertionError):
        check_expr("sum by (model) (rate(http_requests_total[1m]))", "no model label on HTTP series")
    check_expr('sum by (model) (rate(batcher_requests_total{model=~"$model"}[1m]))', "model label")
    assert selectors('a{x="1"} + b + rate(c[1m]) + histogram_quantile(0.5, d_bucket{y=~"$v"})') == [
        ("a", 'x="1"'),
        ("b", ""),
        ("c", ""),
        ("d_bucket", 'y=~"$v"'),
    ]


# --------------------------------------------------------------------------------------------- Dockerfile
def test_hadolint() -> None:
    hadolint = require_tool("hadolint")
    assert_tool_ok(run_tool(hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)))


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) >= 2, "the Dockerfile must be multi-stage (builder + runtime)"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text or froms[-1].startswith("python:3.11-slim")
    assert re.search(r"^ARG TORCH_SPEC=torch==2\.13\.0$", text, re.M), "TORCH_SPEC build arg missing"
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", text), "the project itself must be pip-installed"
    last_stage = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    kinds = dict(last_stage)
    user = kinds.get("USER", "")
    assert user and user.split(":")[0] not in ("root", "0"), "the runtime stage must run as a non-root user"
    assert kinds.get("EXPOSE") == str(SERVICE_PORT)
    assert kinds.get("STOPSIGNAL") == "SIGTERM"
    # Exec form (a JSON array), so trio-infer is PID 1 and SIGTERM reaches the server, not a shell.
    for keyword in ("ENTRYPOINT", "CMD"):
        assert keyword in kinds, f"the runtime stage has no {keyword}"
        try:
            value = json.loads(kinds[keyword])
        except json.JSONDecodeError:
            value = None
        assert isinstance(value, list), f"{keyword} must use the exec (JSON array) form: {kinds[keyword]!r}"
    assert json.loads(kinds["ENTRYPOINT"]) == ["trio-infer"]
    healthcheck = kinds.get("HEALTHCHECK", "")
    assert "/health" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    env = " ".join(rest for kw, rest in last_stage if kw == "ENV")
    assert "HF_HUB_OFFLINE=1" in env


def test_dockerignore() -> None:
    lines = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for excluded in (".git", ".venv"):
        assert excluded in lines, f".dockerignore must exclude {excluded}"
    for needed in ("trio_infer", "pyproject.toml"):
        assert needed not in lines, f".dockerignore must not exclude {needed} (the build copies it)"
    if "*.md" in lines:
        assert "!README.md" in lines, "README.md is the package readme: the build needs it"


# --------------------------------------------------------------------------------------------- compose
def test_compose_schema() -> None:
    check = require_tool("check-jsonschema")
    assert_tool_ok(run_tool(check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def volume_target(services: dict[str, Any], service: str, source: str) -> str:
    for volume in services[service].get("volumes", []):
        src, _, rest = volume.partition(":")
        if src.rstrip("/") == source:
            return rest.split(":")[0]
    raise AssertionError(f"{service} does not mount {source}")


def test_compose_consistency() -> None:
    services = compose()["services"]
    assert {"trio-infer", "prometheus", "grafana"} <= set(services)

    app = services["trio-infer"]
    assert app["build"] == "." or app["build"]["context"] == "."
    # The replicas publish no port; the gateway publishes the service port and forwards to them.
    assert "ports" not in app and str(SERVICE_PORT) in [str(p) for p in app["expose"]]
    assert app["deploy"]["replicas"] >= 2
    gateway = services["gateway"]
    assert gateway["image"].startswith("haproxy:")
    assert any(str(p).split(":")[-2] == str(SERVICE_PORT) for p in gateway["ports"])
    assert volume_target(services, "gateway", "./deploy/haproxy/haproxy.cfg").endswith("haproxy.cfg")
    assert "healthcheck" in app and "/health" in json.dumps(app["healthcheck"])
    env = app.get("environment", {})
    graceful = float(env.get("GRACEFUL_TIMEOUT", 30))
    drain = float(env.get("DRAIN_DELAY", 0))
    grace = parse_duration_s(app["stop_grace_period"])
    assert grace > graceful + drain, f"stop_grace_period {grace}s must exceed drain {drain}s + {graceful}s"

    assert services["prometheus"]["image"].startswith("prom/prometheus")
    prom_mount = volume_target(services, "prometheus", "./prometheus")
    command = " ".join(services["prometheus"].get("command", []))
    config_flag = re.search(r"--config\.file=(\S+)", command)
    config_path = config_flag.group(1) if config_flag else "/etc/prometheus/prometheus.yml"
    assert config_path == f"{prom_mount}/prometheus.yml"

    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    genv = grafana["environment"]
    assert str(genv["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert genv["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert volume_target(services, "grafana", "./grafana/provisioning") == "/etc/grafana/provisioning"
    provider = load_yaml(DASHBOARD_PROVIDER)["providers"][0]
    assert volume_target(services, "grafana", "./grafana/dashboards") == provider["options"]["path"]


# --------------------------------------------------------------------------------------------- Prometheus
def test_promtool_check_config() -> None:
    assert_tool_ok(run_tool(promtool(), "check", "config", str(PROM_CONFIG.relative_to(ROOT))))


def test_promtool_check_rules() -> None:
    assert_tool_ok(run_tool(promtool(), "check", "rules", str(ALERTS.relative_to(ROOT))))


def test_promtool_test_rules() -> None:
    proc = run_tool(promtool(), "test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert_tool_ok(proc)
    assert "SUCCESS" in proc.stdout + proc.stderr, tool_output(proc)


def test_prometheus_config_scrapes_service() -> None:
    config = load_yaml(PROM_CONFIG)
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["trio-infer"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert parse_duration_s(job["scrape_interval"]) == 5
    # DNS discovery of every replica behind the gateway.
    (discovery,) = job["dns_sd_configs"]
    assert discovery["type"] == "A" and discovery["port"] == SERVICE_PORT
    (host,) = discovery["names"]
    assert host in compose()["services"], "the scrape target must be the compose service name"


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_alert_rules_shape() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in rules:
        where = f"alert {rule['alert']}"
        assert parse_duration_s(rule["for"]) > 0, f"{where}: needs a `for:`"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), where
        assert rule["annotations"].get("summary"), f"{where}: summary annotation missing"
        assert rule["annotations"].get("description"), f"{where}: description annotation missing"


def test_alert_rules_cover_the_issue() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs.values())

    assert has(r'batcher_requests_total\{status="error"\}'), "error-rate alert missing"
    assert has(r"histogram_quantile\(0\.99,.*batcher_request_latency_seconds_bucket"), "p99 alert missing"
    assert has(r"batcher_queue_size"), "queue alert missing"
    assert has(r'batcher_requests_total\{status="rejected"\}'), "rejection alert missing"
    assert has(r"\bup\{[^}]*\}\s*==\s*0"), "service-down alert missing"
    assert has(r"trio_infer_healthy\s*==\s*0"), "health alert missing"


def test_alert_metrics_in_contract() -> None:
    for rule in alert_rules():
        check_expr(rule["expr"], f"alert {rule['alert']}")


def test_batcher_alerts_are_per_model() -> None:
    """An alert on batcher series keeps `model` in every aggregation (or aggregates nothing), so one
    model's errors or queue are not averaged away by another's traffic, and its summary names it."""
    per_model = 0
    for rule in alert_rules():
        expr = rule["expr"]
        if not any(name.startswith("batcher_") for name, _ in selectors(expr)):
            continue
        where = f"alert {rule['alert']}"
        for group in _GROUPING_RE.findall(expr):
            assert "model" in {label.strip() for label in group.split(",")}, f"{where}: by ({group})"
        assert "$labels.model" in rule["annotations"]["summary"], f"{where}: the summary must name the model"
        per_model += 1
    assert per_model >= 5, per_model


def test_alert_unit_tests_show_per_model_alerts() -> None:
    """A unit test with two models where only the troubled model's alerts fire."""
    tests = load_yaml(ALERTS_TEST)
    shown = set()
    for case in tests["tests"]:
        models = {m for s in case["input_series"] for m in re.findall(r'model="([^"]+)"', s["series"])}
        if len(models) < 2:
            continue
        for check in case["alert_rule_test"]:
            fired = {alert["exp_labels"].get("model") for alert in check.get("exp_alerts", [])}
            if fired and fired < models:
                shown.add(check["alertname"])
    for alert in ("TrioInferHighErrorRate", "TrioInferRequestTimeouts", "TrioInferHighLatencyP99"):
        assert alert in shown, f"no two-model case where {alert} fires for one model only"


def test_alert_unit_tests_cover_every_alert() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    tests = load_yaml(ALERTS_TEST)
    assert tests["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for series in case.get("input_series", []):
            name = series["series"].split("{")[0].strip()
            assert name in PROMETHEUS_BUILTIN_METRICS or base_metric(name), (
                f"test series {name} not in contract"
            )
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert (fires | silent) <= alerts, f"tests name unknown alerts: {sorted((fires | silent) - alerts)}"
    assert fires == alerts, f"alerts never shown firing in {ALERTS_TEST.name}: {sorted(alerts - fires)}"
    assert silent == alerts, f"alerts never shown silent in {ALERTS_TEST.name}: {sorted(alerts - silent)}"


# --------------------------------------------------------------------------------------------- Grafana
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def data_panels() -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard()["panels"]) if p.get("type") != "row"]


def test_grafana_datasource() -> None:
    datasources = load_yaml(DATASOURCE)["datasources"]
    assert len(datasources) == 1
    ds = datasources[0]
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert ds["url"].split("//")[1].split(":")[0] in compose()["services"]


def test_grafana_dashboard_provider() -> None:
    providers = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    panels = list(iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in data_panels():
        where = f"panel {panel.get('title')!r}"
        assert panel.get("title"), "every panel needs a title"
        assert set(panel["gridPos"]) >= {"h", "w", "x", "y"}, where
        assert panel["datasource"]["uid"] == DATASOURCE_UID, where
        targets = panel.get("targets") or []
        assert targets, f"{where}: no queries"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in targets:
            assert target.get("expr", "").strip(), f"{where}: empty expr"
            assert target.get("datasource", {"uid": DATASOURCE_UID})["uid"] == DATASOURCE_UID, where


def test_dashboard_panels_cover_the_issue() -> None:
    titles = " | ".join(p["title"].lower() for p in data_panels())
    for wanted in (
        "request rate",
        "latency p50",
        "batch size",
        "batch tokens",
        "efficiency",
        "batch wait",
        "inference time",
        "queue size",
        "in-flight",
        "rejections",
        "http requests",
        "event-loop lag",
        "ready",
    ):
        assert wanted in titles, f"no dashboard panel for {wanted!r}: {titles}"


def test_dashboard_metrics_in_contract() -> None:
    used: set[str] = set()
    for panel in data_panels():
        for target in panel["targets"]:
            where = f"panel {panel['title']!r} query {target['refId']}"
            expr = target["expr"]
            used |= check_expr(expr, where)
            windows = re.findall(r"\[([^\]]+)\]", expr)
            assert all(w == "1m" for w in windows), f"{where}: use [1m] windows, got {windows}"
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            bases = {b for n in promql_metric_names(expr) if (b := base_metric(n))}
            allowed = set(TARGET_LABELS).union(*(CONTRACT_METRICS[b][1] for b in bases))
            assert legend_labels <= allowed, f"{where}: legend uses unknown labels {legend_labels - allowed}"
    missing = set(CONTRACT_METRICS) - used
    assert not missing, f"contract metrics with no dashboard panel: {sorted(missing)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker, so each query becomes a recording rule and is parsed."""
    rules = []
    for panel in data_panels():
        for target in panel["targets"]:
            expr = target["expr"].replace("$model", MODEL_ALL)  # Grafana's value for "All"
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_tool_ok(run_tool(promtool(), "check", "rules", str(rules_file)))


def model_variable() -> dict[str, Any]:
    variables = {v["name"]: v for v in dashboard().get("templating", {}).get("list", [])}
    assert MODEL_VARIABLE in variables, (
        f"the dashboard has no {MODEL_VARIABLE!r} variable: {sorted(variables)}"
    )
    variable: dict[str, Any] = variables[MODEL_VARIABLE]
    return variable


def test_dashboard_has_a_multi_select_model_variable() -> None:
    variable = model_variable()
    assert variable["type"] == "query"
    assert variable["datasource"]["uid"] == DATASOURCE_UID
    query = variable["query"]
    query = query["query"] if isinstance(query, dict) else query
    assert re.fullmatch(r"label_values\(\s*batcher_requests_total\s*,\s*model\s*\)", query), query
    assert variable["multi"] is True and variable["includeAll"] is True
    assert variable.get("allValue") == MODEL_ALL, "All must match every model, whatever its name"
    assert variable["current"]["value"] in (["$__all"], "$__all"), "the default must be All"
    assert variable.get("refresh") in (1, 2), "the list must be loaded from Prometheus, not frozen"
    check_expr(f"{query.split('(', 1)[1].split(',')[0].strip()}", "model variable")


def test_dashboard_per_model_panels_filter_and_split_by_model() -> None:
    """Every query on per-model series filters every such selector by the variable, keeps `model`
    in every aggregation (one line per model), and its legend names the model."""
    per_model_panels = 0
    for panel in data_panels():
        filtered = False
        for target in panel["targets"]:
            expr = target["expr"]
            where = f"panel {panel['title']!r} query {target['refId']}"
            model_series = model_selectors(expr)
            if not model_series:
                assert "$model" not in expr, f"{where}: the model variable on series without the label"
                continue
            for name, matchers in model_series:
                assert MODEL_FILTER in matchers.replace(" ", ""), f"{where}: {name} not filtered by model"
            for group in _GROUPING_RE.findall(expr):
                labels = {label.strip() for label in group.split(",")}
                assert "model" in labels, f"{where}: aggregates the models together: by ({group})"
            assert "{{model}}" in target.get("legendFormat", "").replace(" ", ""), f"{where}: legend"
            filtered = True
        per_model_panels += filtered
    # request rate, latency, rejections, queue, 6 batching panels, the info panel
    assert per_model_panels >= 11, per_model_panels


def test_dashboard_batcher_panels_use_the_model_variable() -> None:
    titles = {p["title"] for p in data_panels() if any("batcher_" in t["expr"] for t in p["targets"])}
    for panel in data_panels():
        if panel["title"] in titles:
            for target in panel["targets"]:
                if "batcher_" in target["expr"]:
                    assert "$model" in target["expr"], f"panel {panel['title']!r}: {target['expr']}"
    assert len(titles) >= 10, sorted(titles)


# --------------------------------------------------------------------------------------------- Kubernetes
def k8s_files() -> list[Path]:
    files = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files, f"no manifests in {K8S_DIR}"
    return files


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in k8s_files() for doc in load_yaml_all(path)]


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, None], ids=[K8S_MIN_VERSION, "latest"])
def test_kubernetes_validate_strict(version: str | None) -> None:
    tool = require_tool("kubernetes-validate")
    args = [tool, "--strict"]
    if version:
        args += ["-k", version]
    proc = run_tool(*args, *(str(p.relative_to(ROOT)) for p in k8s_files()))
    assert_tool_ok(proc)
    # kubernetes-validate only warns (exit 0) when it has no schema for a kind/apiVersion: a typo
    # there would go unchecked, so a warning fails the test as well.
    assert "WARN" not in proc.stdout and "ERROR" not in proc.stdout, tool_output(proc)
    passed = proc.stdout.count(" passed for resource ")
    assert passed == len(k8s_objects()), tool_output(proc)


def test_kustomization_resources_exist() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization["resources"]:
        assert (K8S_DIR / resource).is_file(), f"kustomization lists missing {resource}"


def deployments() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == "Deployment"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_deployments() -> None:
    found = deployments()
    assert {d["metadata"]["name"] for d in found} >= {"trio-infer"}
    for dep in found:
        where = f"deployment {dep['metadata']['name']}"
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", where
        assert annotations["prometheus.io/port"] == str(SERVICE_PORT), where
        assert annotations["prometheus.io/path"] == "/metrics", where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        (container,) = spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert container["resources"]["requests"] and container["resources"]["limits"], where
        assert container["startupProbe"]["httpGet"]["path"] == "/health", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", where
        env = env_of(container)
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", where
        budget = (
            float(pre_stop[1]) + float(env.get("DRAIN_DELAY", 0)) + float(env.get("GRACEFUL_TIMEOUT", 30))
        )
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > budget, f"{where}: terminationGracePeriodSeconds {grace} <= shutdown budget {budget}"
        if container["securityContext"].get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a read-only root filesystem needs a writable /tmp"


def test_gpu_variant() -> None:
    gpu = [
        d
        for d in deployments()
        if "nvidia.com/gpu" in d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu, "no GPU deployment variant (nvidia.com/gpu limit)"
    for dep in gpu:
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
        assert env_of(container)["DEVICE"] == "cuda"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_line_up() -> None:
    objects = k8s_objects()
    deps = deployments()
    for dep in deps:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selects(dep["spec"]["selector"]["matchLabels"], labels)
        for other in deps:
            if other is not dep:
                other_labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selects(dep["spec"]["selector"]["matchLabels"], other_labels), (
                    f"the selectors of {dep['metadata']['name']} and {other['metadata']['name']} overlap"
                )
    dep_names = {d["metadata"]["name"] for d in deps}
    for obj in objects:
        kind = obj["kind"]
        if kind == "Service":
            for dep in deps:
                assert selects(obj["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
            assert any(p["port"] == SERVICE_PORT for p in obj["spec"]["ports"])
        elif kind == "PodDisruptionBudget":
            assert obj["apiVersion"] == "policy/v1"
            for dep in deps:
                assert selects(
                    obj["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]
                )
        elif kind == "HorizontalPodAutoscaler":
            assert obj["apiVersion"] == "autoscaling/v2"
            assert obj["spec"]["scaleTargetRef"]["name"] in dep_names


def test_hpa_variants() -> None:
    hpas = [o for o in k8s_objects() if o["kind"] == "HorizontalPodAutoscaler"]
    metrics = [m for h in hpas for m in h["spec"]["metrics"]]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    pods_metrics = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
    assert "batcher_queue_size" in pods_metrics, "no queue-depth HPA variant"
    assert all(name in CONTRACT_METRICS for name in pods_metrics)


# --------------------------------------------------------------------------------------------- docs
def test_monitoring_doc_covers_everything() -> None:
    doc = MONITORING.read_text(encoding="utf-8")
    missing_metrics = [m for m in CONTRACT_METRICS if m not in doc]
    assert not missing_metrics, f"MONITORING.md does not describe {missing_metrics}"
    missing_alerts = [r["alert"] for r in alert_rules() if r["alert"] not in doc]
    assert not missing_alerts, f"MONITORING.md has no runbook for {missing_alerts}"
    missing_panels = [p["title"] for p in data_panels() if p["title"] not in doc]
    assert not missing_panels, f"MONITORING.md does not describe panels {missing_panels}"
    assert "tests/test_prometheus_live.py" in doc
    assert "docker compose up" in doc


# --------------------------------------------------------------------------------------------- security
LOCAL_BINDS = ("127.0.0.1:", "${BIND_ADDRESS:-127.0.0.1}:")


def test_compose_publishes_ports_on_localhost_only_by_default() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith(LOCAL_BINDS), f"{name} publishes {port!r}"


def test_compose_grafana_admin_password_comes_from_the_environment() -> None:
    password = compose()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    # `${VAR:?message}`: compose refuses to start without it, so there is no admin/admin
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    assert "PASSWORD:-" not in COMPOSE.read_text()


def test_compose_prometheus_lifecycle_api_is_off() -> None:
    command = compose()["services"]["prometheus"].get("command", [])
    assert not any("enable-lifecycle" in part for part in command)
    assert not any("enable-admin-api" in part for part in command)


def test_deployments_read_the_api_key_from_a_secret_and_threads_from_the_cpu_limit() -> None:
    for dep in deployments():
        where = f"deployment {dep['metadata']['name']}"
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        secret = env["API_KEY"]["valueFrom"]["secretKeyRef"]
        assert secret["name"] and secret["key"] and not secret.get("optional", False), where
        assert "value" not in env["API_KEY"], where
        assert "cpu" in container["resources"]["limits"], where
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            field = env[name]["valueFrom"]["resourceFieldRef"]
            assert field["resource"] == "limits.cpu" and field["containerName"] == container["name"], where


def test_network_policy_admits_only_the_service_port_and_dns() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    policies = [o for o in k8s_objects() if o["kind"] == "NetworkPolicy"]
    assert policies, "no NetworkPolicy"
    (policy,) = policies
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert "networkpolicy.yaml" in kustomization["resources"]
    spec = policy["spec"]
    for dep in deployments():
        assert selects(spec["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {(p["protocol"], p["port"]) for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress_ports == {("TCP", SERVICE_PORT)}
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert egress_ports == {53}
