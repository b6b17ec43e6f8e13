"""A worker entry point that fails at once: drives the supervisor's crash-loop logic in a spawned
process without the cost of a real worker's imports (a module of its own, so the child imports
nothing else)."""

from __future__ import annotations

import os
from typing import Any


def exit_at_once(*args: Any) -> None:
    os._exit(3)
