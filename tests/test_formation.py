"""Batch formation: length order, cost-model cuts, the size cap and the padded-token budget."""

from __future__ import annotations

import random

from trio_infer.core.formation import CostModel, plan_batches

COST = CostModel(fixed=0.017, per_token=0.00035)


def _flatten(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def test_every_item_planned_exactly_once() -> None:
    lengths = [random.Random(seed).randint(3, 250) for seed in range(97)]
    batches = plan_batches(lengths, COST, max_tokens=2048, max_size=32)
    assert sorted(_flatten(batches)) == list(range(len(lengths)))


def test_batches_run_in_length_order() -> None:
    lengths = [50, 5, 200, 7, 60, 6, 180]
    batches = plan_batches(lengths, COST, max_tokens=4096, max_size=32)
    planned = [lengths[i] for i in _flatten(batches)]
    assert planned == sorted(lengths)


def test_short_texts_not_padded_to_a_long_one() -> None:
    # 17 short texts and one long: the cost model must keep the long one apart.
    lengths = [12] * 17 + [167]
    batches = plan_batches(lengths, COST, max_tokens=100_000, max_size=32)
    longest_batch_of_short = max(lengths[i] for i in batches[0])
    assert longest_batch_of_short == 12
    assert [i for batch in batches for i in batch if lengths[i] == 167] == [17]
    assert len(batches) == 2


def test_similar_lengths_share_a_batch() -> None:
    lengths = [20, 21, 22, 20, 19, 21]
    assert len(plan_batches(lengths, COST, max_tokens=4096, max_size=32)) == 1


def test_size_cap() -> None:
    lengths = [10] * 100
    batches = plan_batches(lengths, COST, max_tokens=10**9, max_size=32)
    assert max(len(batch) for batch in batches) <= 32
    assert sum(len(batch) for batch in batches) == 100


def test_token_budget() -> None:
    lengths = [random.Random(seed).randint(3, 120) for seed in range(64)]
    batches = plan_batches(lengths, COST, max_tokens=300, max_size=64)
    for batch in batches:
        if len(batch) > 1:
            assert len(batch) * max(lengths[i] for i in batch) <= 300


def test_oversize_single_text_still_planned() -> None:
    batches = plan_batches([900, 10, 10], COST, max_tokens=256, max_size=32)
    assert [0] in batches
    assert sorted(_flatten(batches)) == [0, 1, 2]


def test_cheaper_than_arrival_order_batching() -> None:
    rng = random.Random(7)
    lengths = [rng.choice([rng.randint(4, 20), rng.randint(100, 250)]) for _ in range(32)]
    planned = sum(
        COST.batch_cost(len(b), max(lengths[i] for i in b)) for b in plan_batches(lengths, COST, 10**6, 32)
    )
    arrival = COST.batch_cost(32, max(lengths))
    one_by_one = sum(COST.batch_cost(1, n) for n in lengths)
    assert planned < arrival
    assert planned < one_by_one


def test_empty_window() -> None:
    assert plan_batches([], COST, max_tokens=100, max_size=4) == []


def test_token_budget_fits_the_device() -> None:
    from trio_infer.models.calibration import choose_token_budget

    cpu = choose_token_budget(CostModel(fixed=0.005, per_token=0.00012), max_batch_size=32, max_tokens=256)
    assert 1000 < cpu < 1500  # 97% of the asymptotic rate: 32.3 x fixed / per_token
    gpu = choose_token_budget(CostModel(fixed=0.004, per_token=0.0000005), max_batch_size=32, max_tokens=256)
    assert gpu == 32 * 256  # the size cap binds on a fast device
    tiny = choose_token_budget(CostModel(fixed=0.00001, per_token=0.001), max_batch_size=32, max_tokens=256)
    assert tiny == 256  # one full-length text always fits
