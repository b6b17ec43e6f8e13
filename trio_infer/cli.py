"""`trio-infer` / `python -m trio_infer`: parse settings, set up logging, bind, run one or several workers.

Order matters for a new user's first minute: settings are checked (exit 2), the API keys file too
(exit 2 with one line naming the file and the line), then the port is bound (exit 1 with one line
naming `host:port` and the cause), all before anything slow is imported or loaded.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TypeVar

from .config import PROG, cache_over_limit, load_settings
from .models.cgroups import cgroup_memory_limit
from .runtime.listener import BindError, bind_listener
from .runtime.logs import SUPERVISOR, configure_logging, exit_now

log = logging.getLogger("trio_infer")

E = TypeVar("E", bound=BaseException)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # --- `export` subcommand (issue 11): pre-build the export cache with the server's own settings.
    if args[:1] == ["export"]:
        settings = load_settings(args[1:])
        configure_logging(settings.log_level, settings.log_format, buffered=False)
        from .models.prebuild import prebuild

        sys.exit(prebuild(settings))
    # --- end of `export`
    settings = load_settings(args)
    too_big = cache_over_limit(settings, cgroup_memory_limit())
    if too_big is not None:
        print(f"{PROG}: error: {too_big} (see {PROG} --help)", file=sys.stderr)
        sys.exit(2)
    # A SIGHUP re-reads the API keys once the server listens for it (runtime.key_reload, or the
    # supervisor's forwarding); until then it must not end the process (its default action): the
    # keys file is read after that anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The supervisor of several workers logs rarely and runs no flushing task: write through.
    configure_logging(
        settings.log_level,
        settings.log_format,
        buffered=settings.workers == 1,
        worker=SUPERVISOR if settings.workers > 1 else None,
    )
    if settings.api_keys_file is not None:
        _check_keys_file(settings.api_keys_file)
    try:
        listener = bind_listener(settings.host, settings.port)
    except BindError as error:
        # One line; the traceback only for those who asked for it.
        log.critical("%s", error, exc_info=error if settings.log_level == "debug" else None)
        exit_now(1)
    if settings.workers > 1:
        from .runtime.workers import run_workers

        sys.exit(run_workers(settings, listener))
    import trio

    from .models.loading import ModelLoadError
    from .runtime.serve import main as serve_main

    try:
        trio.run(functools.partial(serve_main, settings, listener=listener))
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        load_error = _find(error, ModelLoadError)
        if load_error is not None:
            # A configuration problem, not a crash: one line naming the model, the traceback on request.
            log.critical(
                "%s; not starting", load_error, exc_info=load_error if settings.log_level == "debug" else None
            )
            exit_now(1)
        log.critical(
            "fatal: %s; exiting so the orchestrator restarts the process", _describe(error), exc_info=error
        )
        exit_now(1)
    exit_now(0)


def _check_keys_file(path: str) -> None:
    """Refuse to start on a keys file that cannot be used (each worker reads its own copy later: a
    worker restarted after a SIGHUP must see the file as it is then)."""
    from .http.keys_file import KeysFileError, read_keys_file

    try:
        read_keys_file(path)
    except KeysFileError as error:
        log.critical("--api-keys-file: %s; not starting", error)
        exit_now(2)


def _find(error: BaseException, kind: type[E]) -> E | None:
    """The first `kind` in `error` or in trio's nested exception groups around it."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _describe(error: BaseException) -> str:
    """The causes inside trio's nested exception groups, e.g. `CollectorCrash: ...`."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"
