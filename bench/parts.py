"""The two parts of the benchmark: model throughput vs in-process ceilings, and the serving path under wrk."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import TypeVar

import trio

from bench import client, core_loop, cpu, inprocess, metrics, server, wrk
from bench.report import Row, Section

TARGET_SINGLE = 0.90
TARGET_BATCH = 0.90
TARGET_SERVING = 0.90
# Alternating wrk rounds of the bare app and trio-infer in the serving-path part.
SERVING_ROUNDS = 3
# Alternating rounds of each in-process ceiling and the server run it is the reference of.
MODEL_ROUNDS = 2
T = TypeVar("T")
NOISY_CORES = 0.15  # other processes using more than this during a run make its figures suspect


@dataclass
class Settings:
    duration: float
    warmup: float
    inprocess_seconds: float
    wrk_duration: int
    wrk_warmup: int
    clients: tuple[int, int]
    port: int  # trio-infer on port, bare app on port + 1; 0 = free ports
    ready_timeout: float
    wait_quiet: float  # seconds to wait for other processes to go idle before each measurement
    retries: int  # measure again (up to this many times) when other processes disturbed a run
    batching_workers: tuple[int, ...] = ()  # --num-batching-workers values to compare (one server each)
    batching_clients: int = 64  # closed-loop clients in that comparison (more than one batch waiting)
    two_model_clients: tuple[int, int] = (32, 8)  # two-model row: bundled-model clients, debug clients


def _quiet(settings: Settings) -> None:
    if settings.wait_quiet <= 0:
        return
    busy = cpu.wait_quiet(settings.wait_quiet)
    if busy >= 0.15:
        print(
            f"  machine still busy ({busy:.2f} cores) after {settings.wait_quiet:.0f} s; going on", flush=True
        )


def _ports(settings: Settings) -> tuple[int, int]:
    if settings.port:
        return settings.port, settings.port + 1
    return server.free_port(), server.free_port()


def _error_detail(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3])


def _check_stopped(sec: Section, s: server.Server) -> None:
    if s.exit_code == 0:
        sec.notes.append(f"{s.name} exited 0 after SIGTERM.")
        return
    problem = f"{s.name}: {'; '.join(s.notes)} (log: bench/results/{s.log_path.name})"
    sec.notes.append(f"**{problem}**")
    sec.failures.append(problem)


def _least_disturbed(
    label: str, settings: Settings, measure: Callable[[], T], span: Callable[[T], cpu.Span]
) -> T:
    """Run ``measure`` (after waiting for quiet); again while other processes disturbed it, keeping the
    run they disturbed least."""
    best: T | None = None
    for attempt in range(settings.retries + 1):
        _quiet(settings)
        result = measure()
        if best is None or span(result).other_cores < span(best).other_cores:
            best = result
        other = span(result).other_cores
        if other <= NOISY_CORES:
            break
        if attempt < settings.retries:
            print(f"  {label}: other processes used {other:.2f} cores; measuring again", flush=True)
    assert best is not None
    return best


def _check_noise(sec: Section, label: str, span: cpu.Span | None) -> None:
    if span is not None and span.other_cores > NOISY_CORES:
        sec.warnings.append(f"{label}: other processes used {span.other_cores:.2f} cores during the run")


def model_part(texts: list[str], settings: Settings) -> Section:
    """The server at 1 and at 32 clients, each against its in-process ceiling.

    The host's speed drifts by up to 25% within minutes, so each server run is paired with its ceiling
    measured right next to it: the server stays up (idle while the ceiling runs) and the two alternate
    over MODEL_ROUNDS rounds (ceiling first, then server first); the ratio is of the mean rates.

    At 32 clients a third run joins each round: trio-infer's core (the same batcher and model, loaded
    and calibrated as the server does) driven in-process by as many callers, with no HTTP. Its ratio
    to the ceiling is the batcher's share of the gap; the server's ratio to it is the serving path's.
    """
    sec = Section("Model: trio-infer (bundled all-MiniLM-L6-v2, CPU) vs in-process ceilings", "texts/s")
    print("in-process model ...", flush=True)
    model = inprocess.load_model()
    inprocess.warm_up(model, texts)
    print("trio-infer core in-process (batcher and model, no HTTP) ...", flush=True)
    core = core_loop.CoreBatcher.load()
    port, _ = _ports(settings)
    args = ["-m", "trio_infer", "--port", str(port), "--backend", "torch", *server.NO_CACHE]
    pairs = (
        (inprocess.one_at_a_time, TARGET_SINGLE, "one-at-a-time", "in-process one-at-a-time"),
        (inprocess.sorted_batches, TARGET_BATCH, "sorted batches", None),
    )
    ceiling_rows: list[Row] = []
    served_rows: list[Row] = []
    print(f"starting trio-infer on port {port} ...", flush=True)
    try:
        with server.running("trio-infer", args, port, {"MODEL_NAME": None}, settings.ready_timeout) as s:
            for n, (measure, target, of, _name) in zip(settings.clients, pairs, strict=True):
                ceilings: list[inprocess.Ceiling] = []
                cores: list[inprocess.Ceiling] = []
                served: list[tuple[Row, str, cpu.Span]] = []
                with_core = n > 1
                for round_ in range(MODEL_ROUNDS):
                    steps = ("ceiling", "core", "server") if with_core else ("ceiling", "server")
                    for step in steps if round_ % 2 == 0 else steps[::-1]:
                        if step == "core":
                            cores.append(
                                _least_disturbed(
                                    f"core, {n} callers",
                                    settings,
                                    partial(core.closed_loop, texts, n, settings.duration, settings.warmup),
                                    _span,
                                )
                            )
                            print(f"  trio-infer core in-process: {cores[-1].rate:.1f} texts/s", flush=True)
                        elif step == "ceiling":
                            ceilings.append(
                                _least_disturbed(
                                    of,
                                    settings,
                                    partial(measure, model, texts, settings.inprocess_seconds),
                                    _span,
                                )
                            )
                            print(f"  in-process {of}: {ceilings[-1].rate:.1f} texts/s", flush=True)
                        else:
                            served.append(
                                _least_disturbed(
                                    f"{n} client(s)",
                                    settings,
                                    partial(_closed_loop, s, texts, n, settings),
                                    itemgetter(2),
                                )
                            )
                ceiling_rate = sum(c.rate for c in ceilings) / len(ceilings)
                first = ceilings[0]
                ceiling_rows.append(
                    Row(
                        first.name + ("" if measure is inprocess.one_at_a_time else " (latency per batch)"),
                        ceiling_rate,
                        first.quantile(0.5),
                        first.quantile(0.99),
                        role="ceiling",
                    )
                )
                for c in ceilings:
                    if c.span is not None:
                        sec.notes.append(
                            f"{c.name}: {c.texts} texts in {c.seconds:.1f} s ({c.rate:.1f}/s); {c.span.describe()}"
                        )
                    _check_noise(sec, c.name, c.span)
                rows = [row for row, _, _ in served]
                row = _mean_row(rows[0].name, rows)
                row.ratio, row.target, row.ratio_of = row.rate / ceiling_rate, target, of
                served_rows.append(row)
                if cores:
                    served_rows.append(_core_row(sec, cores, ceiling_rate, row, of))
                sec.notes.append(
                    f"{row.name}: runs {', '.join(f'{r.rate:.1f}' for r in rows)} texts/s, "
                    f"next to in-process {of} {', '.join(f'{c.rate:.1f}' for c in ceilings)} texts/s "
                    f"({MODEL_ROUNDS} rounds, alternating)"
                )
                for _, note, span in served:
                    _check_noise(sec, row.name, span)
                    sec.notes.append(note)
        _check_stopped(sec, s)
    except server.ServerError as exc:
        sec.problems.append(f"trio-infer: {exc}")
    del model, core
    sec.rows += _batching_workers_rows(sec, texts, settings)
    sec.rows += ceiling_rows + served_rows
    return sec


def _mean_row(name: str, runs: list[Row], role: str = "") -> Row:
    """One row for alternating runs of one server: their mean rate, the median run's latencies, and
    every run's errors."""
    middle = sorted(runs, key=lambda row: row.rate)[len(runs) // 2]
    return Row(
        name,
        sum(row.rate for row in runs) / len(runs),
        middle.p50,
        middle.p99,
        sum(row.errors or 0 for row in runs),
        error_detail="; ".join(row.error_detail for row in runs if row.error_detail),
        role=role,
    )


def _core_row(
    sec: Section, cores: list[inprocess.Ceiling], ceiling_rate: float, server_row: Row, of: str
) -> Row:
    """The in-process core's row (no target: it locates the gap), with the server's share in a note."""
    rate = sum(c.rate for c in cores) / len(cores)
    first = cores[0]
    for c in cores:
        _check_noise(sec, c.name, c.span)
    sec.notes.append(
        f"{first.name}: runs {', '.join(f'{c.rate:.1f}' for c in cores)} texts/s, alternating with the "
        f"two runs above; the server reached {server_row.rate / rate:.2f} of it (the serving path's "
        f"share), and it reached {rate / ceiling_rate:.2f} of in-process {of} (the batcher's share)."
    )
    return Row(
        first.name + " (no HTTP)",
        rate,
        first.quantile(0.5),
        first.quantile(0.99),
        0,
        ratio=rate / ceiling_rate,
        ratio_of=of,
        role="reference",
    )


def _batching_workers_rows(sec: Section, texts: list[str], settings: Settings) -> list[Row]:
    """One server per `--num-batching-workers` value, all up at once, under the same closed loop of more
    clients than one batch holds: a wider window of texts tokenized ahead sorts by length better (see
    the padding efficiency and forward calls in the notes). The host drifts within minutes, so their
    runs alternate over MODEL_ROUNDS rounds (an idle server costs nothing); rates are the means."""
    values = settings.batching_workers
    n = settings.batching_clients

    def label(workers: int) -> str:
        return f"trio-infer, {n} clients, --num-batching-workers {workers}"

    measured: dict[int, list[tuple[Row, str, cpu.Span]]] = {workers: [] for workers in values}
    started: dict[int, server.Server] = {}
    try:
        with contextlib.ExitStack() as stack:
            for workers in values:
                port, _ = _ports(settings)
                args = ["-m", "trio_infer", "--port", str(port), "--backend", "torch", *server.NO_CACHE]
                args += ["--num-batching-workers", str(workers)]
                print(
                    f"starting trio-infer with --num-batching-workers {workers} on port {port} ...",
                    flush=True,
                )
                started[workers] = stack.enter_context(
                    server.running(
                        f"trio-infer-workers-{workers}",
                        args,
                        port,
                        {"MODEL_NAME": None},
                        settings.ready_timeout,
                    )
                )
            for round_ in range(MODEL_ROUNDS if len(values) > 1 else 1):
                for workers in values if round_ % 2 == 0 else values[::-1]:
                    measured[workers].append(
                        _least_disturbed(
                            label(workers),
                            settings,
                            partial(_closed_loop, started[workers], texts, n, settings),
                            itemgetter(2),
                        )
                    )
    except server.ServerError as exc:
        sec.problems.append(f"--num-batching-workers comparison: {exc}")
    for s_ in started.values():
        _check_stopped(sec, s_)
    rows: list[Row] = []
    for workers, done in measured.items():
        if not done:
            continue
        runs = [row for row, _, _ in done]
        rows.append(_mean_row(label(workers), runs, role="flag comparison"))
        sec.notes.append(
            f"{label(workers)}: runs {', '.join(f'{row.rate:.1f}' for row in runs)} texts/s"
            + (f" ({len(done)} rounds, alternating with the other value)" if len(values) > 1 else "")
        )
        for _, note, span in done:
            _check_noise(sec, label(workers), span)
            sec.notes.append(f"--num-batching-workers {workers}: {note}")
    for row in rows[1:]:
        row.ratio, row.ratio_of = row.rate / rows[0].rate, f"--num-batching-workers {values[0]}"
    return rows


def _ceilings(model: object, texts: list[str], settings: Settings) -> tuple[inprocess.Ceiling, ...]:
    return tuple(
        _least_disturbed(name, settings, partial(fn, model, texts, settings.inprocess_seconds), _span)
        for name, fn in (("one-at-a-time", inprocess.one_at_a_time), ("batches", inprocess.sorted_batches))
    )


def _closed_loop(s: server.Server, texts: list[str], n: int, settings: Settings) -> tuple[Row, str, cpu.Span]:
    print(
        f"  {n} closed-loop client(s), {settings.warmup:.0f} s warm-up + {settings.duration:.0f} s ...",
        flush=True,
    )
    before = metrics.scrape(s)
    with cpu.Span(s.pid) as span:
        res = trio.run(client.run_load, "127.0.0.1", s.port, texts, n, settings.duration, settings.warmup)
    summary = metrics.summarise(before, metrics.scrape(s))
    row = Row(
        f"trio-infer, {n} client{'s' if n > 1 else ''}",
        res.rate,
        res.quantile(0.5),
        res.quantile(0.99),
        res.error_count,
        error_detail=_error_detail(res.errors),
    )
    print(
        f"    {res.rate:.1f} req/s, p50 {row.p50 or 0:.4f} s, p99 {row.p99 or 0:.4f} s, "
        f"errors {res.error_count}",
        flush=True,
    )
    detail = "; ".join(f"{k} {v:.2f}" if v < 100 else f"{k} {v:.0f}" for k, v in summary.items())
    note = f"{n} client(s), incl. warm-up: {span.describe()}" + (
        f"; server metrics: {detail}" if detail else ""
    )
    return row, note, span


def _wrk_run(s: server.Server, label: str, duration: int) -> tuple[wrk.WrkResult, cpu.Span]:
    with cpu.Span(s.pid) as span:
        res = wrk.run(label, s.port, duration)
    return res, span


def _span(c: inprocess.Ceiling) -> cpu.Span:
    assert c.span is not None
    return c.span


def serving_part(settings: Settings) -> Section:
    sec = Section("Serving path: trio-infer (MODEL_NAME=debug) vs bare quart-trio app, wrk", "req/s")
    if not wrk.available():
        sec.problems.append("wrk not found (apt-get install wrk)")
        return sec
    trio_port, bare_port = _ports(settings)
    runs = [
        (
            "bare quart-trio app",
            "bare-app",
            ["-m", "bench.bare_app", "--port", str(bare_port)],
            bare_port,
            {},
        ),
        (
            "trio-infer, MODEL_NAME=debug",
            "trio-infer-debug",
            ["-m", "trio_infer", "--port", str(trio_port), *server.NO_CACHE],
            trio_port,
            {"MODEL_NAME": "debug"},
        ),
    ]
    # The host's speed drifts by tens of percent within minutes, so one run of each, one after the other,
    # can land the drift on one side of the ratio. Both servers stay up (idle between runs, they cost
    # nothing) and their wrk runs alternate, ABBA, over SERVING_ROUNDS rounds; the ratio is of the
    # mean rates.
    measured: dict[str, list[tuple[wrk.WrkResult, cpu.Span]]] = {name: [] for _, name, *_ in runs}
    try:
        with contextlib.ExitStack() as stack:
            started = {}
            for label, name, args, port, env in runs:
                print(f"starting {label} on port {port} ...", flush=True)
                started[name] = stack.enter_context(
                    server.running(name, args, port, env, settings.ready_timeout)
                )
                if settings.wrk_warmup:
                    wrk.run(label, port, settings.wrk_warmup)
            for round_ in range(SERVING_ROUNDS):
                order = runs if round_ % 2 == 0 else runs[::-1]
                for label, name, _args, _port, _env in order:
                    print(f"wrk against {label}, round {round_ + 1} of {SERVING_ROUNDS} ...", flush=True)
                    res, span = _least_disturbed(
                        label,
                        settings,
                        partial(_wrk_run, started[name], label, settings.wrk_duration),
                        itemgetter(1),
                    )
                    print(
                        f"  {res.rate:.1f} req/s, p50 {res.quantile(0.5)} s, errors {res.error_count}",
                        flush=True,
                    )
                    measured[name].append((res, span))
        for s_ in started.values():
            _check_stopped(sec, s_)
    except (server.ServerError, RuntimeError, OSError) as exc:
        sec.problems.append(f"serving path: {exc}")
    rates: dict[str, float] = {}
    for label, name, _args, _port, _env in runs:
        done = measured[name]
        if not done:
            sec.rows.append(Row(label, 0.0, errors=0, error_detail="not measured"))
            continue
        rates[name] = sum(res.rate for res, _ in done) / len(done)
        middle = sorted(done, key=lambda item: item[0].rate)[len(done) // 2][0]
        detail: dict[str, int] = {}
        for res, span in done:
            if res.non_2xx:
                detail["non-2xx"] = detail.get("non-2xx", 0) + res.non_2xx
            for k, v in res.socket_errors.items():
                detail[f"socket {k}"] = detail.get(f"socket {k}", 0) + v
            _check_noise(sec, label, span)
        sec.notes.append(
            f"{label}: runs {', '.join(f'{res.rate:.1f}' for res, _ in done)} req/s; "
            + "; ".join(span.describe() for _, span in done[:1])
        )
        sec.rows.append(
            Row(
                label,
                rates[name],
                middle.quantile(0.5),
                middle.quantile(0.99),
                sum(res.error_count for res, _ in done),
                error_detail=_error_detail(detail),
                role="baseline" if name == "bare-app" else "",
            )
        )
    if len(sec.rows) == 2:
        debug_row = sec.rows[1]
        debug_row.target, debug_row.ratio_of = TARGET_SERVING, "bare"
        if rates.get("bare-app", 0) > 0 and "trio-infer-debug" in rates:
            debug_row.ratio = rates["trio-infer-debug"] / rates["bare-app"]
    command = next((done[0][0].command for done in measured.values() if done), "wrk")
    sec.notes.insert(
        0,
        f"`{command}`, after a {settings.wrk_warmup} s warm-up run of each; both servers up, their runs "
        f"alternating over {SERVING_ROUNDS} rounds (ABBA); rates are the means, latencies of the median run.",
    )
    return sec
