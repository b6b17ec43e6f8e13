"""The device scheduler on the virtual clock: one turn at a time per device, the oldest text first,
cancellation that loses no turn, and devices that do not wait for each other."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from trio_infer.core.scheduler import DeviceScheduler, DeviceSchedulers


async def _free(scheduler: DeviceScheduler) -> bool:
    """Whether a new turn is granted at once (nothing holds the device and nobody is left waiting)."""
    with trio.move_on_after(0.001) as scope:
        async with scheduler.turn(0.0):
            pass
    return not scope.cancelled_caught


async def test_turns_never_overlap_on_one_device(autojump_clock: trio.abc.Clock) -> None:
    scheduler = DeviceScheduler("cpu")
    holding = 0
    most = 0
    intervals: list[tuple[float, float]] = []

    async def call(index: int) -> None:
        nonlocal holding, most
        for round_ in range(5):
            await trio.sleep(0.013 * ((index * 7 + round_) % 5))  # arrivals spread and interleaved
            async with scheduler.turn(trio.current_time()):
                holding += 1
                most = max(most, holding)
                start = trio.current_time()
                await trio.sleep(0.01 * (1 + (index + round_) % 3))
                intervals.append((start, trio.current_time()))
                holding -= 1

    async with trio.open_nursery() as nursery:
        for index in range(8):
            nursery.start_soon(call, index)

    assert most == 1
    assert len(intervals) == 40
    assert scheduler.turns_granted == 40
    intervals.sort()
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end
    assert scheduler.waiting == 0
    assert await _free(scheduler)


async def test_the_oldest_waiter_gets_the_next_turn_whatever_the_arrival_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    scheduler = DeviceScheduler("cpu")
    granted: list[str] = []
    release = trio.Event()
    # Arrival order differs from age order; two waiters share an age (then arrival order breaks the tie).
    arrivals = [("d", 40.0), ("b", 20.0), ("e", 50.0), ("a", 10.0), ("c1", 30.0), ("c2", 30.0)]

    async def holder() -> None:
        async with scheduler.turn(0.0):
            await release.wait()

    async def waiter(name: str, oldest: float) -> None:
        async with scheduler.turn(oldest):
            granted.append(name)
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        for name, oldest in arrivals:
            nursery.start_soon(waiter, name, oldest)
            await trio.testing.wait_all_tasks_blocked()  # each is queued before the next arrives
        assert scheduler.waiting == len(arrivals)
        assert granted == []
        release.set()

    assert granted == ["a", "b", "c1", "c2", "d", "e"]
    assert scheduler.waiting == 0


async def test_a_newcomer_with_an_older_text_overtakes_earlier_waiters(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The queue is ordered by the age of each call's oldest text, not by when the call asked."""
    scheduler = DeviceScheduler("cpu")
    granted: list[str] = []

    async def call(name: str, oldest: float, hold: float) -> None:
        async with scheduler.turn(oldest):
            granted.append(name)
            await trio.sleep(hold)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "first", 0.0, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "saturated", 0.5, 1.0)  # asks first, its oldest text is younger
        await trio.sleep(0.5)
        nursery.start_soon(call, "quiet", 0.2, 0.1)  # asks later, its text has waited longer
        await trio.testing.wait_all_tasks_blocked()
    assert granted == ["first", "quiet", "saturated"]


async def test_a_cancelled_waiter_leaves_the_queue(autojump_clock: trio.abc.Clock) -> None:
    scheduler = DeviceScheduler("cpu")
    release = trio.Event()
    granted: list[str] = []

    async def holder() -> None:
        async with scheduler.turn(0.0):
            await release.wait()

    async def waiter(name: str, oldest: float, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with scheduler.turn(oldest):
                granted.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        oldest_scope = await nursery.start(waiter, "oldest", 1.0)
        await nursery.start(waiter, "next", 2.0)
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.waiting == 2
        oldest_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.waiting == 1
        release.set()

    assert granted == ["next"]
    assert await _free(scheduler)


async def test_a_cancelled_holder_passes_the_turn_on(autojump_clock: trio.abc.Clock) -> None:
    scheduler = DeviceScheduler("cpu")
    granted: list[str] = []

    async def holder(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with scheduler.turn(0.0):
                granted.append("holder")
                await trio.sleep_forever()

    async def waiter(name: str, oldest: float) -> None:
        async with scheduler.turn(oldest):
            granted.append(name)
            await trio.sleep(0.1)

    with trio.fail_after(10):  # a lost turn would hang the waiters forever
        async with trio.open_nursery() as nursery:
            holder_scope = await nursery.start(holder)
            nursery.start_soon(waiter, "a", 1.0)
            nursery.start_soon(waiter, "b", 2.0)
            await trio.testing.wait_all_tasks_blocked()
            holder_scope.cancel()

    assert granted == ["holder", "a", "b"]
    assert scheduler.waiting == 0
    assert await _free(scheduler)


@pytest.mark.parametrize("when", ["cancelled just before the grant", "cancelled just after the grant"])
async def test_a_waiter_cancelled_around_its_grant_loses_no_turn(
    when: str, autojump_clock: trio.abc.Clock
) -> None:
    """The grant and the cancellation land in the same scheduling step: either the waiter's wait raised
    Cancelled after the grant was set, or it was granted and its body meets the cancellation. Either
    way the turn moves on to the next waiter."""
    scheduler = DeviceScheduler("cpu")
    granted: list[str] = []
    scopes: dict[str, trio.CancelScope] = {}

    async def waiter(name: str, oldest: float) -> None:
        with trio.CancelScope() as scope:
            scopes[name] = scope
            async with scheduler.turn(oldest):
                granted.append(name)
                await trio.sleep(0.1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with scheduler.turn(0.0):
                nursery.start_soon(waiter, "unlucky", 1.0)
                nursery.start_soon(waiter, "next", 2.0)
                await trio.testing.wait_all_tasks_blocked()
                assert scheduler.waiting == 2
                if when == "cancelled just before the grant":
                    scopes["unlucky"].cancel()  # no checkpoint between this and the grant below
            if when == "cancelled just after the grant":
                scopes["unlucky"].cancel()  # granted by the exit above, not yet running

    # Cancelled first, it never runs; granted first, its body runs and meets the cancellation.
    assert granted == (["next"] if when == "cancelled just before the grant" else ["unlucky", "next"])
    assert scheduler.waiting == 0
    assert await _free(scheduler)


async def test_separate_devices_run_in_parallel_and_one_device_serialises(
    autojump_clock: trio.abc.Clock,
) -> None:
    schedulers = DeviceSchedulers()
    cpu = schedulers.for_device("cpu")
    assert schedulers.for_device("cpu") is cpu
    gpu = schedulers.for_device("cuda:0")
    assert gpu is not cpu
    assert gpu.device == "cuda:0"

    intervals: dict[str, tuple[float, float]] = {}

    async def call(name: str, scheduler: DeviceScheduler) -> None:
        async with scheduler.turn(trio.current_time()):
            start = trio.current_time()
            await trio.sleep(1.0)
            intervals[name] = (start, trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "cpu-1", cpu)
        nursery.start_soon(call, "gpu", gpu)
        nursery.start_soon(call, "cpu-2", schedulers.for_device("cpu"))

    def overlap(a: str, b: str) -> bool:
        return intervals[a][0] < intervals[b][1] and intervals[b][0] < intervals[a][1]

    assert overlap("cpu-1", "gpu") or overlap("cpu-2", "gpu")
    assert not overlap("cpu-1", "cpu-2")
    assert intervals["gpu"][0] == min(start for start, _ in intervals.values())
