"""python -m bench: trio-infer throughput vs in-process ceilings, and serving overhead vs a bare app.

Exit status 0 when the benchmark ran, whether or not the targets were met (missed targets are printed);
1 when a part could not run at all (server failed to start, wrk missing, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench import corpus, report
from bench.backends import backends_part
from bench.cache_rows import cache_part
from bench.parts import Settings, model_part, serving_part
from bench.priority_rows import priorities_part
from bench.server import REPO_ROOT, RESULTS_DIR
from bench.two_models import two_models_part

PARTS = ("model", "backends", "serving", "two-models", "priorities", "cache")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, help="seconds per closed-loop run (default 25; --quick 5)")
    p.add_argument(
        "--warmup", type=float, help="warm-up seconds before each closed-loop run (default 5; --quick 2)"
    )
    p.add_argument("--wrk-duration", type=int, help="seconds per wrk run (default 15; --quick 5)")
    p.add_argument(
        "--quick", action="store_true", help="short runs for smoke testing (writes bench/results/)"
    )
    p.add_argument("--skip-model", action="store_true", help="skip the real-model part (in-process + server)")
    p.add_argument(
        "--skip-backends", action="store_true", help="skip the backend rows (openvino, onnx, int8)"
    )
    p.add_argument(
        "--skip-wrk", action="store_true", help="skip the serving-path part (debug model vs bare, wrk)"
    )
    p.add_argument(
        "--skip-two-models",
        action="store_true",
        help="skip the two-model row (bundled and debug model in one server, mixed load)",
    )
    p.add_argument(
        "--only",
        help=f"comma-separated parts to run, the others skipped: {', '.join(PARTS)} "
        "(backends needs model); default: all",
    )
    p.add_argument(
        "--port", type=int, default=0, help="trio-infer port (bare app: port+1); default: free ports"
    )
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for GET /ready")
    p.add_argument(
        "--wait-quiet",
        type=float,
        help="before each measurement wait up to this many seconds for the machine to go idle "
        "(default 60; --quick 0)",
    )
    p.add_argument(
        "--retries",
        type=int,
        help="measure a run again (up to this many times) when other processes used the CPU during it "
        "(default 2; --quick 0)",
    )
    p.add_argument("--output", type=Path, help="markdown file to update (default BENCHMARKS.md)")
    p.add_argument(
        "--batching-workers",
        help="comma-separated --num-batching-workers values to compare, one server each, under "
        "--batching-clients closed-loop clients (default 1,4; --quick: none); 'none' to skip",
    )
    p.add_argument(
        "--batching-clients",
        type=int,
        default=64,
        help="closed-loop clients for the --batching-workers comparison (default 64: two batches' worth)",
    )
    p.add_argument(
        "--two-model-clients",
        default="32,8",
        help="closed-loop clients of the two-model row: BUNDLED,DEBUG (default 32,8: the bundled model "
        "saturated, the debug model the quiet one)",
    )
    args = p.parse_args(argv)
    only = set(_names(args.only)) if args.only else set(PARTS)
    if only - set(PARTS):
        p.error(f"--only: unknown part(s) {', '.join(sorted(only - set(PARTS)))}; parts: {', '.join(PARTS)}")
    args.skip_model |= "model" not in only
    args.skip_backends |= "backends" not in only
    args.skip_wrk |= "serving" not in only
    args.skip_two_models |= "two-models" not in only
    args.only_parts = only
    clients = _int_list(args.two_model_clients, default="32,8")
    if len(clients) != 2 or min(clients) < 1:
        p.error("--two-model-clients: two positive numbers, BUNDLED,DEBUG")
    args.two_model_clients = (clients[0], clients[1])
    return args


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _int_list(value: str | None, *, default: str) -> tuple[int, ...]:
    text = default if value is None else value
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(int(part) for part in text.split(","))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so the server subprocesses get stopped


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    load = report.loadavg()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quick = args.quick
    settings = Settings(
        duration=args.duration or (5.0 if quick else 25.0),
        warmup=args.warmup if args.warmup is not None else (2.0 if quick else 5.0),
        inprocess_seconds=0.0 if quick else 10.0,
        wrk_duration=args.wrk_duration or (5 if quick else 15),
        wrk_warmup=1 if quick else 3,
        clients=(1, 32),
        port=args.port,
        ready_timeout=args.ready_timeout,
        retries=args.retries if args.retries is not None else (0 if quick else 2),
        wait_quiet=args.wait_quiet if args.wait_quiet is not None else (0.0 if quick else 60.0),
        batching_workers=_int_list(args.batching_workers, default="" if quick else "1,4"),
        batching_clients=args.batching_clients,
        two_model_clients=args.two_model_clients,
    )
    # A partial run (--only) or a quick one never rewrites BENCHMARKS.md unless --output says so.
    default_output = (
        RESULTS_DIR / "BENCHMARKS.quick.md"
        if quick
        else RESULTS_DIR / "BENCHMARKS.only.md"
        if args.only
        else REPO_ROOT / "BENCHMARKS.md"
    )
    output = args.output or default_output
    texts = corpus.make_corpus()
    corpus_text = corpus.describe(texts) + f" (seed {corpus.DEFAULT_SEED}, `bench/corpus.py`)"
    print(f"corpus: {corpus_text}", flush=True)

    sections: list[report.Section] = []
    problems: list[str] = []
    parts: list[tuple[str, bool, Callable[[], report.Section]]] = [
        ("model", args.skip_model, lambda: model_part(texts, settings)),
        (
            "backends",
            args.skip_model or args.skip_backends,
            lambda: backends_part(texts, settings, sections[0]),
        ),
        ("serving", args.skip_wrk, lambda: serving_part(settings)),
        ("two-models", args.skip_two_models, lambda: two_models_part(texts, settings)),
        ("priorities", "priorities" not in args.only_parts, lambda: priorities_part(texts, settings)),
        ("cache", "cache" not in args.only_parts, lambda: cache_part(texts, settings)),
    ]
    for name, skip, run in parts:
        if skip:
            continue
        section = run()
        sections.append(section)
        for problem in section.problems:
            print(f"ERROR: {name} part: {problem}", file=sys.stderr, flush=True)
            lines = [ln.strip() for ln in problem.splitlines() if ln.strip()]
            short = lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")
            problems.append(f"{name} part: {short[:300]}")

    failures = [f"{r.name}: {r.verdict}" for s in sections for r in s.rows if r.failed]
    failures += [f for s in sections for f in s.failures] + problems
    settings_text = (
        f"closed loop {settings.warmup:.0f} s warm-up + {settings.duration:.0f} s per run; "
        f"wrk {settings.wrk_duration} s; in-process >= {settings.inprocess_seconds:.0f} s per ceiling"
        + (" (--quick)" if quick else "")
        + (" (--skip-model)" if args.skip_model else "")
        + (" (--skip-wrk)" if args.skip_wrk else "")
        + (" (--skip-two-models)" if args.skip_two_models else "")
        + (f" (--only {args.only})" if args.only else "")
    )
    run_text = report.render_run(sections, settings_text, corpus_text, failures, load)
    print("\n" + run_text)
    RESULTS_DIR.mkdir(exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    report.write(output, run_text)
    raw = {"settings": asdict(settings), "sections": [asdict(s) for s in sections], "failures": failures}
    (RESULTS_DIR / "latest.json").write_text(json.dumps(raw, indent=2))
    print(f"written to {output}", flush=True)
    if failures:
        print("TARGETS MISSED: " + "; ".join(failures), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
