"""What a client may hold: timeouts and a cap on open connections, on top of uvicorn's httptools protocol.

uvicorn closes idle keep-alive connections but has no header or body timeout, no header size limit, and
accepts connections until the process runs out of file descriptors - after which every new client is reset.
``GuardedProtocol`` adds, per connection:

- a header deadline (from connect, or from the first byte of each later request, to the end of its headers)
  and a body deadline (from the end of the headers to the end of the body): past either the client gets a 408
  and the connection is closed;
- a cap on the bytes of the request line and headers (431 and close);

and, for the whole server (``ConnectionGuard``), a cap on open connections set below the file-descriptor limit:
a connection beyond it closes the connection that has been idle longest (no request in progress: an idle
keep-alive one, or one still trickling its headers), or, when every connection is busy with a request, is
answered 503 with ``connection: close``. New clients are served or told to retry, never reset.
"""

from __future__ import annotations

import json
import resource

from edgedl.errors import EdgeDLError
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


def _reply(status: int, message: str) -> bytes:
    from http import HTTPStatus

    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


COALESCE_BELOW_BYTES = 64 * 1024  # writes smaller than this wait for the end of the event loop's iteration


class CoalescingTransport:
    """A connection's transport whose small writes in one event-loop iteration leave in one send: uvicorn writes
    a response's head and its body separately (two system calls, two TCP segments to wake the client for); here
    they go out together, after the handler that wrote them returns. Large writes go at once, after what is
    pending (no copy of a big body). Everything else is the transport's own."""

    __slots__ = ("_transport", "_loop", "_parts")

    def __init__(self, transport, loop):
        self._transport, self._loop, self._parts = transport, loop, []

    def write(self, data) -> None:
        if len(data) >= COALESCE_BELOW_BYTES:
            self.flush()
            self._transport.write(data)
            return
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)

    def flush(self) -> None:
        parts = self._parts
        if parts:
            self._parts = []
            if not self._transport.is_closing():  # a connection lost meanwhile takes nothing more
                self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._parts = []
        self._transport.abort()

    def __getattr__(self, name):
        return getattr(self._transport, name)


def protocol_class(guard: ConnectionGuard):
    """The uvicorn protocol class for a server guarded by ``guard`` (pass it as ``uvicorn.Config(http=...)``)."""
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        raise EdgeDLError("the server needs httptools; install it with: pip install 'edgedl[serve]'") from None
    limits = guard.limits

    async def busy(scope, receive, send):
        body = json.dumps({"error": f"the server holds {len(guard.open)} connections (limit "
                                    f"{guard.max_connections}), all busy; retry later"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.transport = CoalescingTransport(transport, self.loop)  # what the request cycles write to
            self._in_headers = True
            self._header_bytes = 0  # received while reading a request's line and headers (0: a silent close is owed)
            self._phase, self.deadline = "headers", self.loop.time() + limits.header_timeout_s
            self._admitted = guard.opened(self)

        def connection_lost(self, exc) -> None:
            guard.closed(self)
            self.deadline = None
            super().connection_lost(exc)

        @property
        def idle(self) -> bool:
            """No request being served: an idle keep-alive connection, or one still sending headers."""
            return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

        def close(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def expired(self) -> None:
            """The deadline of the current phase (headers or body) has passed."""
            self.deadline = None
            if self.transport.is_closing():
                return
            phase = self._phase
            seconds = limits.header_timeout_s if phase == "headers" else limits.body_timeout_s
            guard.drop("timeout")
            if phase == "body" and self.cycle is not None and self.cycle.response_started:
                self.close()  # the app already answered (e.g. 413 before reading the body): just stop listening
            elif phase == "body" or self._header_bytes:
                self.transport.write(_reply(408, f"the request {phase} did not arrive within {seconds:g} s"))
                self.close()
            else:
                self.close()  # connected and sent nothing

        # --- parsing -----------------------------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            guard.touch(self)
            if self._in_headers:  # counted here, before the parser buffers a header of any length
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end
                if self._header_bytes > limits.max_header_bytes:
                    self._reject(431, f"request line and headers exceed {limits.max_header_bytes} bytes")
                    return
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._reject(400, "protocol upgrades are not supported")
            except httptools.HttpParserError as exc:  # the parser's reason, e.g. both Content-Length and chunked
                reason = str(exc).strip()
                self._reject(400, "invalid HTTP request" + (f": {reason}" if reason else "") + "; the connection "
                                  "is closed")

        def _reject(self, status: int, message: str) -> None:
            guard.drop("rejected")
            if not self.transport.is_closing():
                self.transport.write(_reply(status, message))
                self.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            if self.deadline is None:  # a later request on a keep-alive connection
                self._phase, self.deadline = "headers", self.loop.time() + limits.header_timeout_s

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._phase, self.deadline = "body", self.loop.time() + limits.body_timeout_s
            if not self._admitted:
                self.app = busy
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.deadline = None
            super().on_message_complete()

    return GuardedProtocol
