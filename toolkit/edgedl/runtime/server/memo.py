"""What the server works out once and looks up again, for keys its clients choose (paths, request headers,
response heads)."""

from __future__ import annotations


class Memo(dict):
    """A dict of at most ``kept`` entries: when full it forgets everything and fills again. Cheaper than tracking
    which entry was used last, and a client that sends a new key every time costs no more than without it."""

    __slots__ = ("kept",)

    def __init__(self, kept: int):
        super().__init__()
        self.kept = kept

    def keep(self, key, value):
        if len(self) >= self.kept:
            self.clear()
        self[key] = value
        return value
