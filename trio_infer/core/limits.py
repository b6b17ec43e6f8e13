"""The batcher's limits, as configured (see `--help` for what each flag means to a user)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """max_batch_size: most texts in one forward pass. max_batch_tokens: padded-token budget of a pass
    (count x longest; a single longer text still runs alone). batch_timeout: longest a text waits for
    batch-mates while the model is idle (0: run at once). batches_ahead: how many batches' worth of
    texts are tokenized ahead of the model while a pass runs; the next pass is planned over them.
    max_queue_size: most texts admitted and not yet in a forward pass."""

    max_batch_size: int = 32
    max_batch_tokens: int = 4096
    batch_timeout: float = 0.0
    batches_ahead: int = 4
    max_queue_size: int = 4096

    @property
    def window(self) -> int:
        """Most tokenized texts waiting for the model; each pass is planned over these."""
        return self.max_batch_size * self.batches_ahead
