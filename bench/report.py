"""Markdown tables, the machine description, and the BENCHMARKS.md section for the latest run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench.server import REPO_ROOT

START = "<!-- bench:latest:start -->"
END = "<!-- bench:latest:end -->"

HEADER = """# Benchmarks

Produced by `make bench` (`HF_HUB_OFFLINE=1 .venv/bin/python -m bench`; `--help` for the flags).
The section between the markers below is rewritten by every full run; notes outside it are kept.

Targets:
- trio-infer with 1 closed-loop client >= 0.90 x the in-process rate of `model.encode(text)`,
  one text at a time.
- trio-infer with 32 closed-loop clients >= 0.90 x the in-process rate of `model.encode(batch)` on texts
  globally sorted by token length, batches of 32 (a ceiling that no online batcher can fully reach).
  Next to it, with no target, trio-infer's core run in-process (`bench/core_loop.py`: the server's own
  batcher and model, loaded and calibrated as the server does, 32 closed-loop callers, no HTTP). Its
  ratio to the ceiling is the batcher's share of the gap; the server's ratio to it is the serving path's.
- Serving path: trio-infer with `MODEL_NAME=debug` (hash embedder, no torch) >= 0.90 x a bare quart-trio
  app on hypercorn's trio worker with the same request and response shapes (`wrk -t2 -c32`,
  `bench/post.lua`).
- Two models in one process (issue 12, `bench/two_models.py`): one server with
  `--model sentence-transformers/all-MiniLM-L6-v2 --model debug` (torch backend), 32 closed-loop clients
  on the bundled model and 8 on the debug model at once, against the same server's runs of each model
  alone. No numeric target: every request must be answered (0 errors, each by the model it named) and
  both models served; the table gives the bundled model's rate with the debug load as a ratio of its rate
  alone, and the debug model's p99 while the bundled model is saturated (the notes compare it with the
  bundled model's forward pass and latency). The start log's per-model memory lines are in the notes.
- Priority classes (issue 18, `bench/priority_rows.py`): 2 interactive clients (single texts, 0.1 s
  apart) alone, and with 4 bulk clients sending `/v1` lists of 256 (`X-Priority: bulk`), against the same
  load without the header and without the cap on bulk passes. Targets: interactive p99 <= 2 x (idle p99 +
  forward-pass p99), p50 <= 3 x idle p50, bulk texts/s >= 0.85 x bulk alone, 0 errors.
- Embedding cache (issue 20, `bench/cache_rows.py`): Zipf (s = 1.1) single texts at 32 clients >= 3x
  the server with `--cache-size 0`, a hit's p50 < 3 ms, re-index lists of 64 (80 % seen) >= 3.5x,
  resident memory within `--cache-size` + 10 % after filling it twice over, 0 errors.
- A row passes only if it also had no errors (any non-200 answer or broken connection).
"""


@dataclass
class Row:
    name: str
    rate: float
    p50: float | None = None
    p99: float | None = None
    errors: int | None = None
    ratio: float | None = None
    target: float | None = None
    ratio_of: str = ""
    error_detail: str = ""
    role: str = ""  # shown instead of a verdict on rows without a target, e.g. "ceiling"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return f"({self.role})" if self.role else ""
        if self.ratio is None:
            return "FAIL (not measured)"
        if self.ratio < self.target:
            return "**FAIL**"
        if self.errors:
            return "**FAIL** (errors)"
        return "pass"

    @property
    def failed(self) -> bool:
        return self.target is not None and self.verdict != "pass"


@dataclass
class Section:
    title: str
    rate_label: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the benchmark could not measure something
    warnings: list[str] = field(default_factory=list)  # e.g. other processes busy during a run
    failures: list[str] = field(default_factory=list)  # failed checks outside the table (exit status)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def table(section: Section) -> str:
    lines = [
        f"| run | {section.rate_label} | p50 | p99 | errors | ratio | target | result |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in section.rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}" + (f" of {r.ratio_of}" if r.ratio_of else "")
        target = "-" if r.target is None else f">= {r.target:.2f}"
        errors = (
            "-" if r.errors is None else str(r.errors) + (f" ({r.error_detail})" if r.error_detail else "")
        )
        lines.append(
            f"| {r.name} | {r.rate:.1f} | {_ms(r.p50)} | {_ms(r.p99)} | {errors} | {ratio} | {target} "
            f"| {r.verdict} |"
        )
    return "\n".join(lines)


def render_section(section: Section) -> str:
    out = [f"### {section.title}", "", table(section)]
    if section.notes:
        out += ["", *[f"- {n}" for n in section.notes]]
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "no commit yet"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (with uncommitted changes)" if dirty else "")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine(load: str) -> list[str]:
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} cores; RAM {_ram_gib()}; "
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}; torch {_version('torch')}; "
        f"sentence-transformers {_version('sentence-transformers')}; trio {_version('trio')}; "
        f"hypercorn {_version('hypercorn')}; quart-trio {_version('quart-trio')}",
        f"git commit: {_git_commit()}",
        f"load average at start (1/5/15 min): {load} (other work on the machine skews the figures)",
    ]


def render_run(sections: list[Section], settings: str, corpus: str, failures: list[str], load: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## Latest run: {now}", "", *[f"- {m}" for m in machine(load)], f"- Settings: {settings}"]
    out += [f"- Corpus: {corpus}", ""]
    for s in sections:
        out += [render_section(s), ""]
    if failures:
        out += ["**Targets missed:**", "", *[f"- {f}" for f in failures], ""]
    else:
        out += ["All targets met.", ""]
    warnings = [w for s in sections for w in s.warnings]
    if warnings:
        out += ["**Warnings (figures may be skewed):**", "", *[f"- {w}" for w in warnings], ""]
    return "\n".join(out).rstrip() + "\n"


def write(path: Path, run_text: str) -> None:
    block = f"{START}\n{run_text}{END}\n"
    if path.exists():
        old = path.read_text()
        if START in old and END in old:
            head, rest = old.split(START, 1)
            tail = rest.split(END, 1)[1].lstrip("\n")
            path.write_text(head + block + (("\n" + tail) if tail else ""))
            return
        path.write_text(old.rstrip() + "\n\n" + block)
        return
    path.write_text(HEADER + "\n" + block)
