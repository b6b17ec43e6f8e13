"""`--workers N`: a supervisor process and N worker processes serving one listening socket.

The process that parsed the command line becomes the supervisor; it serves no traffic. It binds the
listening socket once (before any worker starts, so a busy port fails at once) and starts N workers
with multiprocessing's 'spawn' method, handing each the same socket: each is a fresh interpreter
running `serve.main` with its own model, batcher and event loop, accepting from the one shared
accept queue (per connection, not per request: a keep-alive connection stays with one worker). No
SO_REUSEPORT, so no other process can bind the port while the service runs.

Calibration: the workers share one calibration file in a temporary directory of the supervisor's;
the first worker calibrates and the others (replacements included) reuse its cost model and token
budget, so every worker reports the same `/health` (models.shared_calibration).

Heartbeats: each worker's event loop writes a byte to its own socket pair every second
(runtime.heartbeat). A worker that has beaten once and then stays silent for `--heartbeat-timeout`
(a wedged event loop, a stopped process) is killed with SIGKILL and replaced like a crashed one.

Metrics: `PROMETHEUS_MULTIPROC_DIR` is set before any worker starts, and this process imports
prometheus_client only afterwards, so every worker writes its metrics to per-process files there
and `/metrics`, whichever worker answers it, merges them all. When the variable is unset a fresh
temporary directory is used and removed at exit; when it is set, its `*.db` files are deleted at
start (they belong to an earlier run) and the directory is left in place.

Contract of `run_workers`:

* Signals. SIGTERM or SIGINT to the supervisor starts the shutdown: every worker gets SIGTERM and
  drains itself exactly as a single process would (readiness off, listener closed after
  --drain-delay, in-flight requests answered within --graceful-timeout). The supervisor waits up to
  drain_delay + graceful_timeout + a margin, then SIGKILLs what is left. Further signals during the
  shutdown are logged and change nothing. Workers run in their own process group, so a terminal's
  Ctrl-C reaches only the supervisor, which forwards it as SIGTERM; on Linux a worker also gets
  SIGTERM from the kernel if the supervisor dies (parent-death signal), so no worker outlives it.
  SIGHUP to the supervisor is forwarded to every running worker, each of which re-reads
  `--api-keys-file` (runtime.key_reload); a worker that is still starting reads the file after it
  has started listening for SIGHUP, so it never misses a change. During the shutdown SIGHUP is
  ignored.
* Crashes. A worker that exits without being asked to is reaped, its live gauges are dropped from
  the merged metrics (`mark_process_dead`), and it is restarted after a backoff (0.5 s, doubling
  up to 8 s). After 5 unexpected exits within 60 s the supervisor stops the remaining workers and
  returns 1, so the orchestrator sees a crash loop instead of a half-dead service.
* Exit status. 0 when every worker exited 0 after the shutdown request; 1 when one failed, had to
  be killed, or the workers kept crashing.
* Resources. When `run_workers` returns or raises, no worker process is left running (stragglers are
  SIGKILLed and reaped), the signal handlers it installed are restored, the listening socket it was
  given is closed, and its temporary directories are removed. It must be called from the main thread.
  The supervisor closes its copy of the listening socket when the shutdown starts, so once every
  worker has closed its own the port refuses connections instead of queueing them.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing import connection, get_context
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType

from ..config import Settings
from ..models.threads import available_cpus
from .listener import display_address
from .logs import configure_logging, exit_now

log = logging.getLogger(__name__)

METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_RELOAD = signal.SIGHUP
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 8.0
_CRASH_LIMIT = 5
_CRASH_WINDOW = 60.0
# Beyond drain_delay + graceful_timeout: hypercorn's own 2 s grace, closing the batcher, interpreter exit.
_SHUTDOWN_MARGIN = 10.0
_PR_SET_PDEATHSIG = 1


def run_workers(
    settings: Settings, listener: socket.socket, *, worker_main: Callable[..., None] | None = None
) -> int:
    """Run `settings.workers` worker processes serving `listener` (bound and listening) until
    SIGTERM/SIGINT; return the exit status. Takes ownership of `listener`.

    `worker_main`: the workers' entry point (default `serve.main` in a worker; tests pass a
    module-level stand-in with the same arguments, to drive the supervisor alone).

    Blocks the calling (main) thread for the service's lifetime; see the module docstring for the
    signal, restart, exit-status and clean-up contract.
    """
    with listener:
        _share_cores(settings.workers)
        with _metrics_dir() as metrics_dir, tempfile.TemporaryDirectory(prefix="trio-infer-run-") as run_dir:
            log.info(
                "supervisor pid %d: starting %d workers on %s (authentication: %s; metrics in %s)",
                os.getpid(),
                settings.workers,
                display_address(*listener.getsockname()[:2]),
                "on" if settings.api_key or settings.api_keys_file else "off",
                metrics_dir,
            )
            return _Supervisor(settings, listener, Path(run_dir) / "calibration.json", worker_main).run()


def _share_cores(workers: int) -> None:
    """Give each worker's torch an equal share of the cores unless OMP_NUM_THREADS is already set:
    N workers each using every core for its forward passes would oversubscribe the CPU."""
    if "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, available_cpus() // workers)  # the cgroup CPU quota, not the host's cores
        os.environ["OMP_NUM_THREADS"] = str(threads)
        log.info("OMP_NUM_THREADS=%d for each of %d workers", threads, workers)


@contextmanager
def _metrics_dir() -> Iterator[Path]:
    """Set `PROMETHEUS_MULTIPROC_DIR` (a fresh temporary directory unless already set) and empty it."""
    configured = os.environ.get(METRICS_DIR_VAR)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="trio-infer-metrics-"))
    os.environ[METRICS_DIR_VAR] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(METRICS_DIR_VAR, None)
        shutil.rmtree(path, ignore_errors=True)


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the merged metrics (its counters keep counting)."""
    # Imported here, after _metrics_dir has set the directory (the parent never records metrics,
    # but nothing in it may import prometheus_client before the variable is set).
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except OSError as error:
        log.warning("could not remove the metrics files of worker pid %d: %s", pid, error)


@dataclass
class _Slot:
    """One of the N worker positions: its current process, or when its replacement is due."""

    number: int
    process: SpawnProcess | None = None
    restart_at: float | None = None
    heartbeats: socket.socket | None = None  # the supervisor's end of the worker's heartbeat pair
    last_beat: float | None = None  # None until the worker's event loop has beaten once

    def beat_overdue(self, now: float, timeout: float) -> bool:
        return self.process is not None and self.last_beat is not None and now - self.last_beat > timeout


@dataclass
class _Supervisor:
    settings: Settings
    listener: socket.socket
    calibration_file: Path
    worker_main: Callable[..., None] | None = None  # None: _worker_main
    slots: list[_Slot] = field(default_factory=list)
    crashes: deque[float] = field(default_factory=deque)
    signals: list[int] = field(default_factory=list)
    hangups: int = 0  # SIGHUPs received and not yet forwarded

    def __post_init__(self) -> None:
        self.slots = [_Slot(number) for number in range(1, self.settings.workers + 1)]
        self._context = get_context("spawn")
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        for sock in (self._wakeup_read, self._wakeup_write):
            sock.setblocking(False)

    # ---------------------------------------------------------------------------------- lifetime
    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOP_SIGNALS}
        previous[_RELOAD] = signal.signal(_RELOAD, self._on_hangup)
        previous_fd = signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        try:
            for slot in self.slots:
                self._start(slot)
            status = self._supervise()
            return self._shutdown(status)
        finally:
            self._kill_remaining()
            signal.set_wakeup_fd(previous_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._wakeup_read.close()
            self._wakeup_write.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)  # the wakeup fd interrupts the wait in _supervise/_shutdown

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self.hangups += 1  # forwarded by _supervise, woken by the wakeup fd

    def _forward_hangups(self) -> None:
        if not self.hangups:
            return
        self.hangups = 0
        running = self._processes(self.slots)
        log.info("SIGHUP received: forwarding it to %d workers (re-reading the API keys)", len(running))
        for process in running:
            _send(process, _RELOAD)

    def _supervise(self) -> int:
        """Keep N workers running until a stop signal (returns 0) or a crash loop (returns 1);
        forward SIGHUP to the workers."""
        timeout = self.settings.heartbeat_timeout
        while not self.signals:
            self._forward_hangups()
            now = time.monotonic()
            for slot in self.slots:
                if slot.beat_overdue(now, timeout) and slot.process is not None:
                    log.error(
                        "worker %d (pid %s) sent no heartbeat for %.1f s: killing it",
                        slot.number,
                        slot.process.pid,
                        now - (slot.last_beat or now),
                    )
                    _send(slot.process, signal.SIGKILL)
                    slot.process.join()
            # Exits are looked for before every wait, and the wait watches every unreaped worker: one
            # that exits after this check has a readable sentinel, so the wait returns at once.
            for slot in self.slots:
                process = slot.process
                if process is None or process.exitcode is None:
                    continue
                log.error(
                    "worker %d (pid %s) exited unexpectedly: %s",
                    slot.number,
                    process.pid,
                    _describe_exit(process.exitcode),
                )
                self._reap(slot, process)
                if not self._schedule_restart(slot):
                    return 1
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
            due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            due += [slot.last_beat + timeout for slot in self.slots if slot.last_beat is not None]
            self._wait(self._processes(self.slots), max(0.0, min(due) - now) + 0.01 if due else None)
        log.info(
            "%s received: stopping %d workers (draining for up to %.1f s)",
            signal.Signals(self.signals[0]).name,
            sum(1 for slot in self.slots if slot.process is not None),
            self.settings.drain_delay + self.settings.graceful_timeout,
        )
        return 0

    def _shutdown(self, status: int) -> int:
        """SIGTERM every worker and wait for the drains; SIGKILL stragglers. Returns the exit status."""
        seen_signals = len(self.signals)
        self.listener.close()  # the workers hold their own copies until their drains close them
        running = [slot for slot in self.slots if slot.process is not None]
        for slot in self.slots:
            slot.restart_at = None
            if slot.process is not None:
                _send(slot.process, signal.SIGTERM)
        deadline = (
            time.monotonic() + self.settings.drain_delay + self.settings.graceful_timeout + _SHUTDOWN_MARGIN
        )
        while True:
            alive = [process for process in self._processes(running) if process.exitcode is None]
            now = time.monotonic()
            if not alive or now >= deadline:
                break
            self._wait(alive, deadline - now)
            if len(self.signals) > seen_signals:
                seen_signals = len(self.signals)
                log.warning("signal received again: already stopping the workers")
        for slot in running:
            process = slot.process
            if process is None:
                continue
            if process.exitcode is None:
                log.error("worker %d (pid %s) did not stop in time: killing it", slot.number, process.pid)
                _send(process, signal.SIGKILL)
                process.join()
                status = 1
            elif process.exitcode != 0:
                log.error(
                    "worker %d (pid %s) failed to drain: %s",
                    slot.number,
                    process.pid,
                    _describe_exit(process.exitcode),
                )
                status = 1
            self._reap(slot, process)
        log.info("all workers stopped; exit status %d", status)
        return status

    def _kill_remaining(self) -> None:
        """Last resort when leaving abnormally (an exception): no worker outlives the supervisor."""
        for slot in self.slots:
            if slot.process is not None:
                _send(slot.process, signal.SIGKILL)
                slot.process.join()
                self._reap(slot, slot.process)

    # ------------------------------------------------------------------------------------ helpers
    def _start(self, slot: _Slot) -> None:
        beats, worker_end = socket.socketpair()
        beats.setblocking(False)
        # The sockets are passed by descriptor: 'spawn' duplicates them into the child at start.
        process = self._context.Process(
            target=self.worker_main or _worker_main,
            args=(
                self.settings,
                os.getpid(),
                slot.number,
                self.listener,
                worker_end,
                self.calibration_file,
            ),
            name=f"trio-infer-worker-{slot.number}",
        )
        # Blocked across the spawn, so the child inherits them blocked and unblocks them only once its
        # own handlers are installed: a stop signal is never lost nor kills a half-started worker.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {*_STOP_SIGNALS, _RELOAD})
        try:
            process.start()
        except BaseException:
            beats.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            worker_end.close()
        slot.process = process
        slot.restart_at = None
        slot.heartbeats = beats
        slot.last_beat = None
        log.info("worker %d started (pid %s)", slot.number, process.pid)

    def _reap(self, slot: _Slot, process: SpawnProcess) -> None:
        process.join()
        if process.pid is not None:
            _mark_dead(process.pid)
        process.close()
        slot.process = None
        if slot.heartbeats is not None:
            slot.heartbeats.close()
        slot.heartbeats = None
        slot.last_beat = None

    def _schedule_restart(self, slot: _Slot) -> bool:
        """Plan the restart of an unexpectedly exited worker; False when the crash budget is spent."""
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - _CRASH_WINDOW:
            self.crashes.popleft()
        recent = len(self.crashes)
        if recent >= _CRASH_LIMIT:
            log.critical(
                "%d unexpected worker exits within %.0f s: giving up (stopping the other workers)",
                recent,
                _CRASH_WINDOW,
            )
            return False
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (recent - 1))
        slot.restart_at = now + delay
        log.warning("restarting worker %d in %.1f s", slot.number, delay)
        return True

    @staticmethod
    def _processes(slots: list[_Slot]) -> list[SpawnProcess]:
        return [slot.process for slot in slots if slot.process is not None]

    def _wait(self, processes: list[SpawnProcess], timeout: float | None) -> None:
        """Until one of `processes` exits (or has exited), a signal arrives, or `timeout` s pass.

        The caller decides which processes to watch from the same look at their exit codes that
        it acts on; re-checking here could see an exit the caller has not handled and then sleep.
        """
        sentinels = [process.sentinel for process in processes]
        beats = [slot.heartbeats for slot in self.slots if slot.heartbeats is not None]
        connection.wait([*sentinels, *beats, self._wakeup_read], timeout=timeout)
        with suppress(BlockingIOError):
            while self._wakeup_read.recv(512):
                pass
        now = time.monotonic()
        for slot in self.slots:
            if slot.heartbeats is not None and _drain(slot.heartbeats):
                slot.last_beat = now


def _drain(channel: socket.socket) -> bool:
    """Read every byte waiting on a non-blocking socket; whether there were any."""
    received = False
    with suppress(BlockingIOError, InterruptedError, ConnectionError):
        while channel.recv(4096):
            received = True
    return received


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _send(process: SpawnProcess, signum: int) -> None:
    if process.pid is None or process.exitcode is not None:
        return
    with suppress(ProcessLookupError):
        os.kill(process.pid, signum)


# ---------------------------------------------------------------------------------- worker side
def _worker_main(
    settings: Settings,
    supervisor_pid: int,
    number: int,
    listener: socket.socket,
    heartbeat: socket.socket,
    calibration_file: Path,
) -> None:
    """Entry point of a worker process (a fresh interpreter started by the supervisor).

    Runs `serve.main` on the supervisor's listening socket until it has drained after SIGTERM, then
    exits 0. A stop signal that arrives before serve.main listens for signals ends the worker at
    once with status 0. An exception leaving serve.main is logged and the worker exits 1 (the
    supervisor restarts it).
    """
    stopping = False

    def stop_early(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise SystemExit(0)

    try:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, stop_early)
        # Until serve.main listens for SIGHUP (and then reads the keys file), one must not end the
        # worker (its default action): the file is read after that anyway.
        signal.signal(_RELOAD, signal.SIG_IGN)
        os.setpgrp()  # a terminal's Ctrl-C goes to the supervisor only; it forwards SIGTERM
        _die_with(supervisor_pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*_STOP_SIGNALS, _RELOAD})  # blocked by the supervisor
        configure_logging(settings.log_level, settings.log_format, buffered=True, worker=number)
        import trio

        from .serve import main as serve_main

        trio.run(
            functools.partial(
                serve_main,
                settings,
                listener=listener,
                heartbeat=heartbeat,
                shared_calibration=calibration_file,
            )
        )
    except BaseException as error:
        if stopping:
            exit_now(0)
        log.critical("worker pid %d failed: %r", os.getpid(), error, exc_info=error)
        exit_now(1)
    exit_now(0)


def _die_with(supervisor_pid: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies; stop now if it already has."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["METRICS_DIR_VAR", "run_workers"]
