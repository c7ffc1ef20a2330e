"""What a client may hold: the server's cap on open connections, the sweep that enforces every connection's
deadlines, and the file-descriptor limit they need. The HTTP/1.1 protocol (http1.py) sets the deadlines (headers,
body, keep-alive) and registers each connection here.

The cap on open connections is set below the file-descriptor limit: a connection beyond it closes the connection
that has been idle longest (no request in progress: an idle keep-alive one, or one still trickling its headers),
or, when every connection is busy with a request, is answered 503 with ``connection: close``. New clients are
served or told to retry, never reset.
"""

from __future__ import annotations

import json
import resource

from edgedl.runtime.server.config import Limits
from edgedl.runtime.server.metrics import ServerMetrics

SWEEP_S = 0.25  # how often deadlines are checked: one timer for the server, not two per request

# file descriptors kept for everything but client sockets (models, logs, the event loop, worker threads, and the
# connections accepted in one burst before the ones they evict are closed on the event loop's next iteration)
FD_RESERVE = 64


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (at most the hard limit); -> the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class ConnectionGuard:
    """The open connections of one server, least recently active first."""

    def __init__(self, limits: Limits, fd_limit: int, metrics: ServerMetrics):
        self.limits = limits
        self.max_connections = max(min(limits.max_connections, fd_limit - FD_RESERVE), 8)
        self.open: dict = {}  # protocol -> None, ordered by last activity (a dict keeps insertion order)
        self._gauge, self._dropped = metrics.connections, metrics.dropped
        self._sweeping = False

    def _sweep(self, loop) -> None:
        now = loop.time()
        for conn in list(self.open):
            if conn.deadline is not None and now >= conn.deadline:
                conn.expired()
        if self.open:
            loop.call_later(SWEEP_S, self._sweep, loop)
        else:
            self._sweeping = False

    def opened(self, conn) -> bool:
        """Register a new connection; -> False when it is over the cap and nothing idle could be closed."""
        self.open[conn] = None
        if not self._sweeping:
            self._sweeping = True
            conn.loop.call_later(SWEEP_S, self._sweep, conn.loop)
        admitted = len(self.open) <= self.max_connections
        if not admitted:
            for other in self.open:
                if other is not conn and other.idle:
                    del self.open[other]  # now, not when the event loop gets to close it
                    self.drop("evicted")
                    other.close()
                    admitted = True
                    break
            else:
                self.drop("refused")
        self._gauge.set((), len(self.open))
        return admitted

    def drop(self, reason: str) -> None:
        self._dropped.inc((reason,))

    def touch(self, conn) -> None:
        if conn in self.open:
            del self.open[conn]
            self.open[conn] = None

    def closed(self, conn) -> None:
        self.open.pop(conn, None)
        self._gauge.set((), len(self.open))


def reply(status: int, message: str, retry_after: bool = False) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection: JSON ``{"error": message}``."""
    from http import HTTPStatus

    body = json.dumps({"error": message}).encode()
    retry = "retry-after: 1\r\n" if retry_after else ""
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{retry}connection: close\r\n\r\n").encode() + body
