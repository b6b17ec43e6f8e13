"""The batcher's limits, as configured (see `--help` for what each flag means to a user)."""

from __future__ import annotations

from dataclasses import dataclass

from .priority import Priority


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """max_batch_size: most texts in one forward pass. max_batch_tokens: padded-token budget of a pass
    (count x longest; a single longer text still runs alone). batch_timeout: longest a text waits for
    batch-mates while the model is idle (0: run at once). batches_ahead: how many batches' worth of
    texts are tokenized ahead of the model while a pass runs; the next pass is planned over them.
    max_queue_size: most interactive texts admitted and not yet in a forward pass;
    max_bulk_queue_size: the same for bulk texts. bulk_batch_tokens: padded-token budget of a pass
    that holds bulk texts while interactive traffic is active (None: max_batch_tokens).
    bulk_min_share: the fraction of forward-pass time bulk texts get under sustained interactive load.
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 4096
    batch_timeout: float = 0.0
    batches_ahead: int = 4
    max_queue_size: int = 4096
    max_bulk_queue_size: int = 4096
    bulk_batch_tokens: int | None = None
    bulk_min_share: float = 0.1

    @property
    def window(self) -> int:
        """Most tokenized texts of one class waiting for the model; each pass is planned over these."""
        return self.max_batch_size * self.batches_ahead

    @property
    def bounds(self) -> dict[Priority, int]:
        return {Priority.INTERACTIVE: self.max_queue_size, Priority.BULK: self.max_bulk_queue_size}

    @property
    def bulk_budget(self) -> int:
        """Padded tokens of a pass holding bulk texts while interactive traffic is active."""
        budget = self.max_batch_tokens if self.bulk_batch_tokens is None else self.bulk_batch_tokens
        return min(budget, self.max_batch_tokens)
