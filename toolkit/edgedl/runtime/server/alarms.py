"""Callbacks on an event loop at a ``perf_counter()`` time, to tens of microseconds.

asyncio's timers are only as fine as its selector's timeout: uvloop's are whole milliseconds, and a delay under
half of one is none at all (``call_later(0.0005)`` runs at once); the standard loop waits the next whole
millisecond. A dynamic batcher's ``max_queue_delay_microseconds`` needs better: one thread sleeps until the
earliest deadline (a timed futex wait, its timer slack lowered to 1 us on Linux) and hands the callback to its
loop with ``call_soon_threadsafe``, which wakes the loop at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from time import perf_counter
from typing import Callable


class Alarm:
    """One pending callback; ``cancel()`` it when it is no longer wanted."""

    __slots__ = ("loop", "callback", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]):
        self.loop, self.callback, self.cancelled = loop, callback, False

    def cancel(self) -> None:
        self.cancelled = True

    def _fire(self) -> None:
        if not self.cancelled:
            self.callback()


class _Alarms:
    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], object]) -> Alarm:
        alarm = Alarm(loop, callback)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edgedl-alarms", daemon=True)
                self._thread.start()
            if self._heap[0][2] is alarm:  # a new earliest deadline: the thread sleeps until it instead
                self._cond.notify()
        return alarm

    def _run(self) -> None:
        _fine_timer_slack()
        heap = self._heap
        with self._cond:
            while True:
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)
                if not heap:
                    self._cond.wait()
                    continue
                wait = heap[0][0] - perf_counter()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                alarm = heapq.heappop(heap)[2]
                try:
                    alarm.loop.call_soon_threadsafe(alarm._fire)
                except RuntimeError:  # its loop has closed
                    pass


def _fine_timer_slack() -> None:
    """This thread's timed waits end within ~1 us of their time instead of the default 50 us (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in nanoseconds
    except (OSError, AttributeError):  # not Linux: the platform's own precision
        pass


_ALARMS = _Alarms()


def call_at(when: float, callback: Callable[[], object]) -> Alarm:
    """``callback()`` on the running loop at ``perf_counter() >= when`` (give or take the kernel's timer slack)."""
    return _ALARMS.call_at(asyncio.get_running_loop(), when, callback)
