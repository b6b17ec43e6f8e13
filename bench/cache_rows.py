"""The embedding cache (issue 20): repeated texts cost nothing.

Two servers with the bundled model on the default backend, up at once: the default `--cache-size`
and `--cache-size 0` (identical texts in flight are still computed once there: that is the server
without a cache). Runs alternate between them over two rounds; each round uses texts of its own (a
round tag), so every run starts with a cold cache.

- Zipf: `ZIPF_REQUESTS` single-text `POST /embed` requests whose texts follow Zipf (s = 1.1) over the
  bench corpus, from 32 clients. Throughput ratio, hit ratio (from the server's counters), and the p50
  of the requests whose text had been answered before they were sent (hits).
- Re-index: `/v1/embeddings` lists of 64 texts of which 80 % were sent before (a warm-up sends them
  once) and 20 % are new, from 4 clients; the same lists against the server without a cache.
- Memory: the debug model (hash vectors, no model cost) with `--cache-size MEMORY_CACHE`, filled
  twice over with distinct texts: the growth of its resident memory must stay within the size + 10 %.

Targets: Zipf >= 3x, hit p50 < 3 ms, re-index >= 3.5x, memory within the bound, 0 errors.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from functools import partial
from pathlib import Path

import trio

from bench import cpu, server
from bench.parts import Settings, _check_stopped, _error_detail
from bench.report import Row, Section
from bench.streams import Stream, http_request, run_streams

ZIPF_REQUESTS = 10_000
ZIPF_S = 1.1
ZIPF_CLIENTS = 32
REINDEX_LISTS = 48
REINDEX_LIST = 64
REINDEX_SEEN = 0.8
REINDEX_CLIENTS = 4
MEMORY_CACHE = 32 << 20
MEMORY_ENTRY = 384 * 4 + 384  # the debug model's vector and the cache's per-entry overhead
_HOST = "127.0.0.1"
_HITS = re.compile(r'^batcher_cache_requests_total\{[^}]*result="(hit|miss|coalesced)"[^}]*\}\s+(\S+)$')


def zipf_sequence(n_texts: int, count: int, seed: int) -> list[int]:
    """`count` indices into `n_texts` texts, rank k drawn with probability proportional to 1/k**s."""
    rng = random.Random(seed)
    ranks = list(range(n_texts))
    rng.shuffle(ranks)  # which text is most popular is arbitrary
    weights = [1.0 / (k + 1) ** ZIPF_S for k in range(n_texts)]
    return [ranks[k] for k in rng.choices(range(n_texts), weights=weights, k=count)]


def _cache_counts(s: server.Server) -> dict[str, float]:
    status, body = s.get("/metrics")
    out = {"hit": 0.0, "miss": 0.0, "coalesced": 0.0}
    if status == 200:
        for line in body.decode(errors="replace").splitlines():
            m = _HITS.match(line)
            if m:
                out[m.group(1)] += float(m.group(2))
    return out


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _zipf_run(
    port: int, texts: list[str], tag: str, seed: int, count: int = ZIPF_REQUESTS, clients: int = ZIPF_CLIENTS
) -> tuple[float, float | None, float, dict[str, int]]:
    """(requests/s, p50 of hits, p50 of all, errors) of one Zipf run."""
    order = zipf_sequence(len(texts), count, seed)
    requests = [http_request(_HOST, port, "/embed", {"input_text": f"{texts[i]} ({tag})"}) for i in order]
    answered: set[int] = set()
    known_at_send: list[bool] = [False] * len(order)
    hit_latencies: list[float] = []

    def sent(index: int) -> None:
        known_at_send[index] = order[index] in answered

    def answer(index: int, t0: float, t1: float) -> None:
        answered.add(order[index])
        if known_at_send[index]:
            hit_latencies.append(t1 - t0)

    stream = Stream("zipf", clients, requests, total=count, on_sent=sent, on_answer=answer)
    result = trio.run(partial(run_streams, _HOST, port, [stream], 3600.0))["zipf"]
    hits_p50 = statistics.median(hit_latencies) if hit_latencies else None
    return result.rate, hits_p50, result.quantile(0.5) or 0.0, dict(result.errors)


def _reindex_lists(texts: list[str], tag: str) -> tuple[list[list[str]], list[str]]:
    """Lists of REINDEX_LIST texts, REINDEX_SEEN of them from the seen set; and the seen set."""
    seen_per_list = round(REINDEX_LIST * REINDEX_SEEN)
    lists, seen = [], []
    for i in range(REINDEX_LISTS):
        old = [
            f"{texts[(i * seen_per_list + j) % len(texts)]} [{tag} doc {i * seen_per_list + j}]"
            for j in range(seen_per_list)
        ]
        new = [
            f"{texts[(i * 7 + j) % len(texts)]} [{tag} new {i}.{j}]"
            for j in range(REINDEX_LIST - seen_per_list)
        ]
        seen += old
        lists.append(old + new)
    return lists, seen


def _reindex_run(port: int, lists: list[list[str]]) -> tuple[float, dict[str, int]]:
    body = [
        http_request(_HOST, port, "/v1/embeddings", {"input": items, "model": "all-MiniLM-L6-v2"})
        for items in lists
    ]
    stream = Stream("reindex", REINDEX_CLIENTS, body, texts=REINDEX_LIST, total=len(body))
    result = trio.run(partial(run_streams, _HOST, port, [stream], 3600.0))["reindex"]
    return stream.texts_per_second(result.duration), dict(result.errors)


def _warm(port: int, seen: list[str]) -> dict[str, int]:
    chunks = [seen[i : i + 256] for i in range(0, len(seen), 256)]
    body = [
        http_request(_HOST, port, "/v1/embeddings", {"input": c, "model": "all-MiniLM-L6-v2"}) for c in chunks
    ]
    stream = Stream("warm", 2, body, total=len(body))
    return dict(trio.run(partial(run_streams, _HOST, port, [stream], 3600.0))["warm"].errors)


def _memory_row(sec: Section, settings: Settings) -> None:
    port = server.free_port()
    args = ["-m", "trio_infer", "--port", str(port), "--cache-size", str(MEMORY_CACHE)]
    fill = 2 * MEMORY_CACHE // MEMORY_ENTRY
    with server.running(
        "trio-infer-cache-memory", args, port, {"MODEL_NAME": "debug"}, settings.ready_timeout
    ) as s:
        warm = [f"warm-up text {i}" for i in range(2000)]
        _warm(port, warm)  # the serving path's own allocations settle first
        s.get("/metrics")
        base = _rss(s.pid)
        errors = _warm(port, [f"distinct text number {i} for the memory row" for i in range(fill)])
        grown = _rss(s.pid) - base
        _check_stopped(sec, s)
    bound = MEMORY_CACHE * 1.1
    sec.notes.append(
        f"memory: --cache-size {MEMORY_CACHE >> 20} MiB filled twice over ({fill} distinct texts, debug model): "
        f"resident memory grew {grown / (1 << 20):.1f} MiB (bound {bound / (1 << 20):.1f} MiB): "
        + ("pass" if grown <= bound and not errors else "**FAIL**")
    )
    if grown > bound or errors:
        sec.failures.append(
            f"cache memory: grew {grown} bytes for a {MEMORY_CACHE}-byte cache; errors {errors}"
        )


def cache_part(texts: list[str], settings: Settings) -> Section:
    sec = Section("Embedding cache (issue 20)", "rate")
    on_port, off_port = server.free_port(), server.free_port()
    env = {"MODEL_NAME": None}
    zipf: dict[str, list[tuple[float, float | None, float]]] = {"on": [], "off": []}
    reindex: dict[str, list[float]] = {"on": [], "off": []}
    errors: dict[str, int] = {}
    hit_ratios: list[float] = []
    lone_hits: list[float] = []
    problem = server.prebuild()
    if problem is not None:
        sec.problems.append(problem)
        return sec
    try:
        with (
            server.running(
                "trio-infer-cache-on",
                ["-m", "trio_infer", "--port", str(on_port)],
                on_port,
                env,
                settings.ready_timeout,
            ) as on,
            server.running(
                "trio-infer-cache-off",
                ["-m", "trio_infer", "--port", str(off_port), *server.NO_CACHE],
                off_port,
                env,
                settings.ready_timeout,
            ) as off,
        ):
            for round_ in range(2):
                for label, s in (("on", on), ("off", off)) if round_ == 0 else (("off", off), ("on", on)):
                    cpu.wait_quiet(settings.wait_quiet)
                    before = _cache_counts(s)
                    rate, hits_p50, p50, errs = _zipf_run(s.port, texts, f"zipf {round_}", seed=round_)
                    after = _cache_counts(s)
                    if label == "on":
                        looked = sum(after[k] - before[k] for k in after)
                        hit_ratios.append((after["hit"] - before["hit"]) / looked if looked else 0.0)
                    zipf[label].append((rate, hits_p50, p50))
                    if label == "on":  # a hit's own latency: one client, the same texts, now cached
                        _, alone, _, errs_alone = _zipf_run(
                            s.port, texts, f"zipf {round_}", round_ + 10, 1000, 1
                        )
                        if alone is not None:
                            lone_hits.append(alone)
                        errs = {**errs, **{f"1 client: {k}": v for k, v in errs_alone.items()}}
                    for k, v in errs.items():
                        errors[f"zipf {label}: {k}"] = errors.get(f"zipf {label}: {k}", 0) + v
                    print(
                        f"cache round {round_ + 1} zipf {label}: {rate:.1f} req/s, hit p50 {hits_p50}",
                        flush=True,
                    )
                lists, seen = _reindex_lists(texts, f"round {round_}")
                for k, v in _warm(on.port, seen).items():
                    errors[f"warm: {k}"] = errors.get(f"warm: {k}", 0) + v
                for label, s in (("on", on), ("off", off)) if round_ == 0 else (("off", off), ("on", on)):
                    cpu.wait_quiet(settings.wait_quiet)
                    rate, errs = _reindex_run(s.port, lists)
                    reindex[label].append(rate)
                    for k, v in errs.items():
                        errors[f"reindex {label}: {k}"] = errors.get(f"reindex {label}: {k}", 0) + v
                    print(f"cache round {round_ + 1} reindex {label}: {rate:.1f} texts/s", flush=True)
            _check_stopped(sec, on)
            _check_stopped(sec, off)
        _memory_row(sec, settings)
    except server.ServerError as exc:
        sec.problems.append(str(exc))
        return sec

    def errors_of(prefix: str) -> dict[str, int]:
        return {k: v for k, v in errors.items() if k.startswith(prefix)}

    z_on = statistics.fmean(r for r, _, _ in zipf["on"])
    z_off = statistics.fmean(r for r, _, _ in zipf["off"])
    hit_p50s = [h for _, h, _ in zipf["on"] if h is not None]
    hit_p50 = statistics.fmean(hit_p50s) if hit_p50s else None
    sec.rows += [
        Row(
            "Zipf, --cache-size 0",
            z_off,
            statistics.fmean(p for _, _, p in zipf["off"]),
            errors=sum(errors_of("zipf off").values()),
            role="reference",
        ),
        Row(
            "Zipf, cache on (p50: hits)",
            z_on,
            hit_p50,
            errors=sum(errors_of("zipf on").values()),
            ratio=z_on / z_off if z_off else None,
            ratio_of="--cache-size 0",
            target=3.0,
            error_detail=_error_detail(errors_of("zipf on")),
        ),
    ]
    r_on, r_off = statistics.fmean(reindex["on"]), statistics.fmean(reindex["off"])
    sec.rows += [
        Row(
            "re-index lists of 64, --cache-size 0 (texts/s)",
            r_off,
            errors=sum(errors_of("reindex off").values()),
            role="reference",
        ),
        Row(
            "re-index lists of 64, 80 % seen (texts/s)",
            r_on,
            errors=sum(errors_of("reindex on").values()) + sum(errors_of("warm").values()),
            ratio=r_on / r_off if r_off else None,
            ratio_of="--cache-size 0",
            target=3.5,
        ),
    ]
    ratio = statistics.fmean(hit_ratios) if hit_ratios else 0.0
    sec.notes.append(
        f"Zipf (s = {ZIPF_S}) over {len(texts)} texts, {ZIPF_REQUESTS} requests, {ZIPF_CLIENTS} clients: "
        f"hit ratio {ratio:.3f}"
    )
    lone = statistics.fmean(lone_hits) if lone_hits else None
    if lone is None or lone >= 0.003:
        sec.failures.append(f"cache: hit p50 at 1 client {lone} s, target < 3 ms")
    sec.notes.append(
        f"hit p50: {'-' if lone is None else f'{lone * 1000:.2f} ms'} at 1 client (target < 3 ms; 1,000 Zipf "
        "requests over the texts just cached); at 32 clients the hits' p50 "
        f"({'-' if hit_p50 is None else f'{hit_p50 * 1000:.1f} ms'}) is the event loop's queue: 32 requests in "
        "flight at the served rate (Little's law: 32 / rate)"
    )
    sec.notes.append(f"two rounds, runs alternating between the servers; wall {time.strftime('%H:%M')} UTC")
    return sec
