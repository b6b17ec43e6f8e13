"""Two models in one process (issue 12): the bundled model and the debug model behind one scheduler.

One server started with `--model sentence-transformers/all-MiniLM-L6-v2 --model debug --backend torch`
(the torch backend, as the model part's server). Both models are on the CPU, so they share one
`DeviceScheduler`: their passes take turns, oldest text first. Three closed-loop runs on that server,
one after the other:

1. the bundled model alone, under its clients (the reference; the debug model is loaded but idle),
2. mixed: the same bundled clients and the debug clients at the same time,
3. the debug clients alone (the reference for the debug model's latency).

The reference runs are on the same server, not on a second one: a second server would calibrate its
own batch-token budget (the calibration varies with the shared host's load) and cost another start,
and a loaded but idle debug model runs no passes. There is no numeric target: the checks are that every
request is answered (0 errors; each response names the model asked for) and that both models are
served in the mixed run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter

import trio

from bench import client, cpu, metrics, server
from bench.parts import (
    Settings,
    _check_noise,
    _check_stopped,
    _error_detail,
    _least_disturbed,
    _ports,
)
from bench.report import Row, Section

BUNDLED = "sentence-transformers/all-MiniLM-L6-v2"
DEBUG = "debug"
MAX_DURATION = 10.0  # seconds per run: the row stays short (three runs, one server start)
MAX_WARMUP = 3.0
_LOADED = re.compile(r"model \S+ loaded \([^)\n]*\): [^\n]*? resident memory")


@dataclass
class Run:
    """One closed-loop run: a load per model, all at once, and each model's server metrics over it."""

    label: str
    results: dict[str, client.LoadResult]
    span: cpu.Span
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)


async def _loads(
    port: int, texts: list[str], plan: dict[str, int], duration: float, warmup: float
) -> dict[str, client.LoadResult]:
    results: dict[str, client.LoadResult] = {}

    async def load(model: str, clients: int) -> None:
        results[model] = await client.run_load(
            "127.0.0.1", port, texts, clients, duration, warmup, name=model, model=model
        )

    async with trio.open_nursery() as nursery:
        for model, clients in plan.items():
            nursery.start_soon(load, model, clients)
    return results


def _run(
    s: server.Server, texts: list[str], label: str, plan: dict[str, int], duration: float, warmup: float
) -> Run:
    print(f"  {label}: {warmup:.0f} s warm-up + {duration:.0f} s ...", flush=True)
    before = {model: metrics.scrape(s, model) for model in plan}
    with cpu.Span(s.pid) as span:
        results = trio.run(_loads, s.port, texts, plan, duration, warmup)
    summaries = {model: metrics.summarise(before[model], metrics.scrape(s, model)) for model in plan}
    for model, res in results.items():
        print(
            f"    {model}: {res.rate:.1f} req/s, p50 {res.quantile(0.5) or 0:.4f} s, "
            f"p99 {res.quantile(0.99) or 0:.4f} s, errors {res.error_count}",
            flush=True,
        )
    return Run(label, results, span, summaries)


def _row(name: str, res: client.LoadResult, role: str) -> Row:
    return Row(
        name,
        res.rate,
        res.quantile(0.5),
        res.quantile(0.99),
        res.error_count,
        error_detail=_error_detail(res.errors),
        role=role,
    )


def _answered(sec: Section, run: Run, model: str) -> str:
    """The row's check: every request of `model` in `run` answered, and at least one."""
    res = run.results[model]
    if res.error_count:
        sec.failures.append(f"{run.label}, {model}: {res.error_count} request(s) not answered")
        return "**FAIL**: not all answered"
    if res.ok == 0:
        sec.failures.append(f"{run.label}, {model}: no request answered")
        return "**FAIL**: not served"
    return "all answered"


def _describe(summary: dict[str, float]) -> str:
    return "; ".join(f"{k} {v:.2f}" if v < 100 else f"{k} {v:.0f}" for k, v in summary.items())


def two_models_part(texts: list[str], settings: Settings) -> Section:
    n_bundled, n_debug = settings.two_model_clients
    duration, warmup = min(settings.duration, MAX_DURATION), min(settings.warmup, MAX_WARMUP)
    sec = Section(
        f"Two models in one process: bundled all-MiniLM-L6-v2 (torch) + debug, one scheduler, "
        f"{n_bundled} + {n_debug} clients",
        "texts/s",
    )
    port, _ = _ports(settings)
    args = ["-m", "trio_infer", "--port", str(port), "--backend", "torch", *server.NO_CACHE]
    args += ["--model", BUNDLED, "--model", DEBUG]
    print(f"starting trio-infer with two models on port {port} ...", flush=True)
    runs: list[Run] = []
    try:
        env = {"MODEL_NAME": None, "MODELS": None}
        with server.running("trio-infer-two-models", args, port, env, settings.ready_timeout) as s:
            memory = _LOADED.findall(s.log_path.read_text(errors="replace"))
            plans = (
                (f"{BUNDLED} alone", {BUNDLED: n_bundled}),
                ("mixed", {BUNDLED: n_bundled, DEBUG: n_debug}),
                (f"{DEBUG} alone", {DEBUG: n_debug}),
            )
            for label, plan in plans:
                measure = partial(_run, s, texts, label, plan, duration, warmup)
                runs.append(_least_disturbed(label, settings, measure, attrgetter("span")))
        _check_stopped(sec, s)
    except server.ServerError as exc:
        sec.problems.append(f"trio-infer with two models: {exc}")
        return sec
    alone, mixed, debug_alone = runs
    reference = alone.results[BUNDLED]
    bundled_row = _row(
        f"{BUNDLED}, {n_bundled} clients, with {n_debug} debug clients",
        mixed.results[BUNDLED],
        _answered(sec, mixed, BUNDLED),
    )
    if reference.rate > 0:
        bundled_row.ratio = bundled_row.rate / reference.rate
        bundled_row.ratio_of = "alone"
    debug_row = _row(
        f"{DEBUG}, {n_debug} clients, with {n_bundled} {BUNDLED} clients",
        mixed.results[DEBUG],
        _answered(sec, mixed, DEBUG),
    )
    sec.rows += [
        _row(f"{BUNDLED} alone, {n_bundled} clients", reference, "reference"),
        bundled_row,
        debug_row,
        _row(f"{DEBUG} alone, {n_debug} clients", debug_alone.results[DEBUG], "reference"),
    ]
    for run in (alone, debug_alone):
        for model in run.results:
            _answered(sec, run, model)
    sec.notes.insert(
        0,
        f"One server (`--backend torch --model {BUNDLED} --model {DEBUG}`), three closed-loop runs of "
        f"{warmup:.0f} s warm-up + {duration:.0f} s: {BUNDLED} alone, both at once, {DEBUG} alone. "
        "Both models are on the CPU: one scheduler, passes take turns, oldest text first. "
        "No numeric target: every request must be answered, each by the model it named.",
    )
    sec.notes += [f"start log: {line}" for line in memory] or ["start log: no per-model memory line"]
    bundled_forward = mixed.summaries.get(BUNDLED, {}).get("mean forward time (ms)")
    debug_p99 = debug_row.p99
    if debug_p99 is not None and bundled_forward:
        bundled_p50, bundled_p99 = (bundled_row.p50 or 0) * 1000, (bundled_row.p99 or 0) * 1000
        sec.notes.append(
            f"mixed: {DEBUG} p99 {debug_p99 * 1000:.1f} ms = {debug_p99 * 1000 / bundled_forward:.1f} x "
            f"the mean {BUNDLED} forward pass ({bundled_forward:.0f} ms); {BUNDLED} p50 {bundled_p50:.0f} "
            f"ms, p99 {bundled_p99:.0f} ms. A debug text waits for the bundled texts admitted before "
            "it (oldest text first), then has the next turn: not for the texts that arrive after it."
        )
    for run in runs:
        _check_noise(sec, f"two models, {run.label}", run.span)
        per_model = "; ".join(
            f"{model} server metrics: {_describe(summary)}" for model, summary in run.summaries.items()
        )
        sec.notes.append(f"{run.label}, incl. warm-up: {run.span.describe()}; {per_model}")
    return sec
