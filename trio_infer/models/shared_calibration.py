"""One calibration for all workers: the first to arrive calibrates, the others read its result.

With `--workers N` every worker loads its own copy of the model. Calibrating each one separately
gave different cost models and token budgets (workers timing themselves while the others loaded),
so `/health` depended on which worker answered. Instead a file shared by the workers holds the
calibration; an exclusive `flock` on a lock file beside it makes the first worker load the model and
calibrate alone while the others wait (not loading, so the timing is not disturbed), and every later
worker, replacements included, reads the stored result and skips calibration.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from ..core.formation import CostModel


@dataclass(frozen=True, slots=True)
class Calibration:
    cost: CostModel
    max_batch_tokens: int


def calibrate_once(path: Path, produce: Callable[[], Calibration]) -> tuple[Calibration, bool]:
    """The calibration stored at `path`, or `produce()`'s, stored there for the other workers.

    Returns it and whether it was produced here. Blocking: waits on the lock while another process
    produces it. A file that cannot be parsed counts as absent; `produce`'s exceptions propagate
    (nothing is stored, and the next process to take the lock tries again)."""
    with open(path.with_suffix(".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        stored = _read(path)
        if stored is not None:
            return stored, False
        calibration = produce()
        partial = path.with_suffix(".tmp")
        partial.write_bytes(
            orjson.dumps({"cost": asdict(calibration.cost), "max_batch_tokens": calibration.max_batch_tokens})
        )
        os.replace(partial, path)  # readers never see half a file
        return calibration, True


def _read(path: Path) -> Calibration | None:
    try:
        data = orjson.loads(path.read_bytes())
        return Calibration(CostModel(**data["cost"]), int(data["max_batch_tokens"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["Calibration", "calibrate_once"]
