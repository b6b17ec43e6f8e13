"""Priority classes (issue 18): queries stay fast while bulk lists keep the server saturated.

One server with the bundled model (the default backend, no cache: the bulk lists repeat the corpus),
four kinds of run, alternating over the rounds:

1. idle: 2 interactive clients, single-text `POST /embed`, each pausing `PAUSE` s between queries
   (a person-facing application: queries arrive spaced; a closed loop without pauses would itself
   saturate the model and there would be no idle reference);
2. mixed: the same 2 interactive clients while 4 bulk clients send `/v1/embeddings` lists of 256
   texts with `X-Priority: bulk`, closed loop;
3. without priorities: the same load, the bulk lists sent without the header (one class for all);
4. bulk alone: the 4 bulk clients only.

Targets: interactive p99 (mixed) <= 2 x (idle p99 + p99 of one forward pass during the mixed run, from
the server's `batcher_inference_time_seconds`), interactive p50 (mixed) <= 3 x idle p50, bulk texts/s
(mixed) >= 0.85 x bulk alone, 0 errors.
"""

from __future__ import annotations

import re
import statistics
from functools import partial

import trio

from bench import cpu, server
from bench.parts import Settings, _check_stopped, _error_detail, _ports
from bench.report import Row, Section
from bench.streams import Stream, http_request, run_streams

PAUSE = 0.1
BULK_LIST = 256
INTERACTIVE_CLIENTS = 2
BULK_CLIENTS = 4
_BUCKET = re.compile(r'^batcher_inference_time_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)$')


def _buckets(s: server.Server) -> dict[float, float]:
    """Cumulative forward-pass-time histogram buckets (all models), upper bound -> count."""
    status, body = s.get("/metrics")
    out: dict[float, float] = {}
    if status != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        m = _BUCKET.match(line)
        if m:
            bound = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out[bound] = out.get(bound, 0.0) + float(m.group(2))
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over the interval between two scrapes (linear in a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def _streams(texts: list[str], port: int, kinds: tuple[str, ...]) -> list[Stream]:
    host = "127.0.0.1"
    queries = [t for t in texts if len(t.split()) <= 12] or texts
    streams = []
    if "interactive" in kinds:
        streams.append(
            Stream(
                "interactive",
                INTERACTIVE_CLIENTS,
                [http_request(host, port, "/embed", {"input_text": q}) for q in queries],
                pause=PAUSE,
            )
        )
    lists = [[texts[(i * BULK_LIST + j) % len(texts)] for j in range(BULK_LIST)] for i in range(8)]
    for kind, headers in (("bulk", {"X-Priority": "bulk"}), ("unprioritised", {})):
        if kind in kinds:
            body = [{"input": items, "model": "sentence-transformers/all-MiniLM-L6-v2"} for items in lists]
            requests = [http_request(host, port, "/v1/embeddings", b, headers) for b in body]
            streams.append(Stream("bulk", BULK_CLIENTS, requests, texts=BULK_LIST))
    return streams


RUNS = {
    "idle": ("interactive",),
    "mixed": ("interactive", "bulk"),
    "mixed, bulk passes not capped": ("interactive", "bulk"),  # on the second server
    "without priorities": ("interactive", "unprioritised"),
    "bulk alone": ("bulk",),
}
UNCAPPED = "mixed, bulk passes not capped"


def priorities_part(texts: list[str], settings: Settings) -> Section:
    sec = Section(
        "Priority classes: interactive queries under a bulk load (issue 18)",
        "interactive req/s | bulk texts/s",
    )
    port, uncapped_port = _ports(settings)
    args = ["-m", "trio_infer", "--port", str(port), *server.NO_CACHE]
    # Does capping bulk passes while queries arrive pay? The same load against a server whose bulk
    # passes may use the whole --max-batch-tokens (the cap is clamped to it).
    uncapped_args = [*args[:3], str(uncapped_port), *server.NO_CACHE, "--bulk-batch-tokens", "10000000"]
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
    errors: dict[str, int] = {}
    duration = max(10.0, settings.duration * 0.8)
    problem = server.prebuild()
    if problem is not None:
        sec.problems.append(problem)
        return sec
    try:
        env = {"MODEL_NAME": None}
        with (
            server.running("trio-infer-priorities", args, port, env, settings.ready_timeout) as capped,
            server.running(
                "trio-infer-priorities-uncapped", uncapped_args, uncapped_port, env, settings.ready_timeout
            ) as uncapped,
        ):
            for round_ in range(2):
                for name, kinds in RUNS.items():
                    s = uncapped if name == UNCAPPED else capped
                    cpu.wait_quiet(settings.wait_quiet)
                    before = _buckets(s)
                    streams = _streams(texts, s.port, kinds)
                    results = trio.run(
                        partial(run_streams, "127.0.0.1", s.port, streams, duration, settings.warmup)
                    )
                    after = _buckets(s)
                    row: dict[str, float] = {"pass_p99": histogram_quantile(0.99, before, after) or 0.0}
                    for stream in streams:
                        result = results[stream.name]
                        errors.update(
                            {
                                f"{name}: {k}": errors.get(f"{name}: {k}", 0) + v
                                for k, v in result.errors.items()
                            }
                        )
                        if stream.name == "interactive":
                            row["p50"] = result.quantile(0.5) or 0.0
                            row["p99"] = result.quantile(0.99) or 0.0
                            row["interactive_rate"] = result.rate
                        else:
                            row["bulk_rate"] = stream.texts_per_second(duration)
                    measured[name].append(row)
                    print(f"priorities round {round_ + 1} {name}: {row}", flush=True)
            for s in (capped, uncapped):
                cap = re.search(r"while queries arrive: at most (\d+) padded tokens", s.log_path.read_text())
                sec.notes.append(
                    f"{s.name}: passes holding bulk texts while queries arrive: at most "
                    f"{cap.group(1) if cap else '?'} padded tokens"
                )
            _check_stopped(sec, capped)
            _check_stopped(sec, uncapped)
    except server.ServerError as exc:
        sec.problems.append(str(exc))
        return sec

    def mean(name: str, key: str) -> float | None:
        values = [r[key] for r in measured[name] if key in r]
        return statistics.fmean(values) if values else None

    total_errors = sum(errors.values())
    idle_p50, idle_p99 = mean("idle", "p50"), mean("idle", "p99")
    pass_p99 = mean("mixed", "pass_p99")
    alone = mean("bulk alone", "bulk_rate")
    for name in RUNS:
        bulk = mean(name, "bulk_rate")
        sec.rows.append(
            Row(
                f"{name}: interactive" if "interactive" in RUNS[name] else name,
                mean(name, "interactive_rate") or (bulk or 0.0),
                mean(name, "p50"),
                mean(name, "p99"),
                errors=sum(v for k, v in errors.items() if k.startswith(f"{name}:")),
                ratio=(bulk / alone) if (bulk and alone and name != "bulk alone") else None,
                ratio_of="bulk alone (bulk texts/s)" if bulk and name != "bulk alone" else "",
                target=0.85 if name == "mixed" else None,
                role="" if name == "mixed" else "reference",
                error_detail=_error_detail({k: v for k, v in errors.items() if k.startswith(f"{name}:")}),
            )
        )
        if bulk:
            sec.notes.append(f"{name}: bulk {bulk:.1f} texts/s")
    mixed_p50, mixed_p99 = mean("mixed", "p50"), mean("mixed", "p99")
    if None not in (idle_p50, idle_p99, pass_p99, mixed_p50, mixed_p99):
        assert idle_p50 is not None and idle_p99 is not None and pass_p99 is not None
        assert mixed_p50 is not None and mixed_p99 is not None
        p99_bound = 2 * (idle_p99 + pass_p99)
        p50_bound = 3 * idle_p50
        sec.notes.append(
            f"interactive p99 mixed {mixed_p99 * 1000:.1f} ms vs bound 2 x (idle p99 {idle_p99 * 1000:.1f} "
            f"+ forward-pass p99 {pass_p99 * 1000:.1f}) = {p99_bound * 1000:.1f} ms: "
            + ("pass" if mixed_p99 <= p99_bound else "**FAIL**")
        )
        sec.notes.append(
            f"interactive p50 mixed {mixed_p50 * 1000:.1f} ms vs bound 3 x idle p50 {idle_p50 * 1000:.1f} = "
            f"{p50_bound * 1000:.1f} ms: " + ("pass" if mixed_p50 <= p50_bound else "**FAIL**")
        )
        if mixed_p99 > p99_bound:
            sec.failures.append("priorities: interactive p99 under mixed load over its bound")
        if mixed_p50 > p50_bound:
            sec.failures.append("priorities: interactive p50 under mixed load over its bound")
    if total_errors:
        sec.failures.append(f"priorities: {total_errors} errors")
    sec.notes.append(
        f"{INTERACTIVE_CLIENTS} interactive clients pausing {PAUSE:g} s between single texts; "
        f"{BULK_CLIENTS} bulk clients sending /v1 lists of {BULK_LIST}; 2 rounds, runs alternating; "
        "the server runs the default backend with --cache-size 0"
    )
    return sec
