"""runtime/server/alarms.py: callbacks on the event loop at a perf_counter() time, finer than asyncio's timers."""

from __future__ import annotations

import asyncio
from time import perf_counter

import pytest

from edgedl.runtime.server import alarms


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_alarms_fire_in_order_never_early_and_not_when_cancelled(use_uvloop):
    if use_uvloop:
        uvloop = pytest.importorskip("uvloop")
        new_loop = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop

    async def main():
        fired: list[tuple[int, float, float]] = []
        done = asyncio.Event()
        t0 = perf_counter() + 0.2  # all armed before the first is due, even on a busy machine
        delays = [0.0004, 0.0001, 0.0025, 0.0009, 0.0002, 0.0015]  # sub-millisecond gaps included
        for i, delay in enumerate(delays):
            when = t0 + delay
            alarms.call_at(when, lambda i=i, when=when: fired.append((i, when, perf_counter())))
        cancelled = alarms.call_at(t0 + 0.0012, lambda: fired.append((-1, 0.0, 0.0)))
        cancelled.cancel()
        alarms.call_at(t0 + 0.004, done.set)
        await asyncio.wait_for(done.wait(), 10)
        return delays, fired

    loop = new_loop()
    try:
        delays, fired = loop.run_until_complete(main())
    finally:
        loop.close()
    assert [i for i, _, _ in fired] == sorted(range(len(delays)), key=delays.__getitem__)  # by time; -1 never
    assert all(at >= when for _, when, at in fired), "an alarm fired before its time"


def test_an_alarm_for_a_closed_loop_is_dropped_and_later_ones_still_fire():
    dead = asyncio.new_event_loop()

    async def arm():
        alarms.call_at(perf_counter() + 0.001, lambda: None)

    dead.run_until_complete(arm())
    dead.close()

    async def main():
        done = asyncio.Event()
        alarms.call_at(perf_counter() + 0.005, done.set)
        await asyncio.wait_for(done.wait(), 10)
        return True

    assert asyncio.run(main())
