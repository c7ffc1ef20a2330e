"""edgedl's HTTP/1.1 connection: httptools parses each request and the app answers it directly
(``InferenceApp.answer``), with no ASGI scope, messages or per-response timers in between.

uvicorn's ``Server`` still owns the listening socket, the signals and the graceful drain; it drives this class
through uvicorn's protocol interface (the constructor it calls, ``server_state.connections`` and ``.tasks``,
``shutdown()``). Per connection this speaks HTTP/1.1 with keep-alive, pipelined requests answered in order,
``Expect: 100-continue``, chunked request bodies and HEAD, and guards it:

- a header deadline (from connect, or from the first byte of each later request, to the end of its headers) and a
  body deadline (from the end of the headers to the end of the body): past either the client gets a 408 and the
  connection is closed; an idle keep-alive connection is closed after the keep-alive timeout. One timer for the
  whole server checks them (``ConnectionGuard``), none is armed per request;
- a cap on the bytes of the request line and headers (431 and close); a malformed request (the parser's
  reason) or an upgrade: 400 and close;
- flow control: reading pauses while a request's unread body passes ``HIGH_WATER_BYTES`` or pipelined requests
  wait, and a response in parts waits for the transport to drain between parts;
- the server's cap on open connections (``ConnectionGuard``): a connection over it, when no idle one could be
  closed, is answered 503 with ``connection: close``.

A response leaves in one write (head and body together) unless it comes in parts.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from http import HTTPStatus
from time import perf_counter

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.app import InferenceApp, RequestContext
from edgedl.runtime.server.connections import ConnectionGuard, reply

log = logging.getLogger("edgedl.serve")
HIGH_WATER_BYTES = 64 * 1024  # a request's body buffered beyond this and not yet read by its handler pauses reading
ONE_WRITE_BELOW_BYTES = 64 * 1024  # a body smaller than this is joined to its head (one send); larger: not copied
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}


class Request:
    """One request on a connection: what its headers said, and its body as it arrives (read with ``receive``,
    which gives ASGI ``http.request`` messages, the form ``InferenceApp`` reads)."""

    __slots__ = ("conn", "method", "path", "header_length", "content_length", "auth", "keep_alive",
                 "expect_continue", "chunks", "buffered", "complete", "disconnected", "waiter", "answered")

    def __init__(self, conn, method: str, path: str, header_length, content_length, auth, keep_alive: bool,
                 expect_continue: bool):
        self.conn, self.method, self.path = conn, method, path
        self.header_length, self.content_length, self.auth = header_length, content_length, auth
        self.keep_alive, self.expect_continue = keep_alive, expect_continue
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the whole body has arrived
        self.disconnected = False
        self.waiter: asyncio.Future | None = None  # the handler waiting for more body
        self.answered = False  # its response has been written (what still arrives of its body is dropped)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def receive(self) -> dict:
        if self.expect_continue:
            self.expect_continue = False
            self.conn.write(_CONTINUE)
        while not self.chunks and not self.complete:
            if self.disconnected:
                return _DISCONNECT
            self.conn.resume_reading()
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks, self.buffered = [], 0
        if not self.complete:
            self.conn.resume_reading()
        return {"type": "http.request", "body": body, "more_body": not self.complete}


def protocol_class(app: InferenceApp, guard: ConnectionGuard):
    """The protocol class for ``uvicorn.Config(http=...)``: connections answered by ``app``, guarded by ``guard``."""
    try:
        import httptools
    except ImportError:
        raise EdgeDLError("the server needs httptools; install it with: pip install 'edgedl[serve]'") from None
    limits = guard.limits

    class Http1Connection(asyncio.Protocol):
        def __init__(self, config=None, server_state=None, app_state=None, _loop=None):
            self.loop = _loop or asyncio.get_event_loop()
            self.connections = server_state.connections if server_state is not None else set()
            self.tasks = server_state.tasks if server_state is not None else set()
            self.parser = httptools.HttpRequestParser(self)
            try:  # answer the first of pipelined requests that ends with 'Connection: close' (as uvicorn does)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
            except AttributeError:  # pragma: no cover - httptools < 0.6.3
                pass
            self.transport = None
            self.client = None
            self.current: Request | None = None  # being answered
            self.parsing: Request | None = None  # its body still arriving
            self.queued: deque[Request] = deque()  # pipelined, answered in order after the current one
            self.read_paused = self.write_paused = self.eof = False
            self.drained: asyncio.Future | None = None
            self._in_headers, self._header_bytes = True, 0
            self._url = b""
            self._header_length = self._content_length = self._auth = None
            self._expect = False
            self._phase, self.deadline = "headers", None

        # --- the transport's calls -----------------------------------------------------------------------
        def connection_made(self, transport) -> None:
            self.transport = transport
            peer = transport.get_extra_info("peername")
            self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
            self.connections.add(self)
            self._phase, self.deadline = "headers", self.loop.time() + limits.header_timeout_s
            self._admitted = guard.opened(self)

        def connection_lost(self, exc) -> None:
            self.connections.discard(self)
            guard.closed(self)
            self.deadline = None
            for request in (self.current, self.parsing, *self.queued):
                if request is not None:
                    request.disconnected = True
                    request.wake()
            self.queued.clear()
            self.resume_writing()

        def eof_received(self):
            """The client stopped sending: answer the requests it sent whole, then close (True keeps the transport
            open); a request whose body can no longer arrive ends now."""
            self.eof = True
            if self.parsing is not None or (self.current is None and not self.queued):
                return None
            return True

        def pause_writing(self) -> None:
            self.write_paused = True

        def resume_writing(self) -> None:
            self.write_paused = False
            drained, self.drained = self.drained, None
            if drained is not None and not drained.done():
                drained.set_result(None)

        def data_received(self, data: bytes) -> None:
            guard.touch(self)
            if self._in_headers:  # counted here, before the parser buffers a header of any length
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end
                if self._header_bytes > limits.max_header_bytes:
                    self._reject(431, f"request line and headers exceed {limits.max_header_bytes} bytes")
                    return
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._reject(400, "protocol upgrades are not supported")
            except httptools.HttpParserCallbackError as exc:  # a bug here, not the client's request
                log.error("internal error parsing a request", exc_info=exc.__context__)
                self._reject(500, "internal server error while reading the request; the connection is closed")
            except httptools.HttpParserError as exc:  # the parser's reason, e.g. both Content-Length and chunked
                reason = str(exc).strip()
                self._reject(400, "invalid HTTP request" + (f": {reason}" if reason else "") + "; the connection "
                                  "is closed")

        # --- the parser's calls --------------------------------------------------------------------------
        def on_message_begin(self) -> None:
            self._in_headers = True
            self._url = b""
            self._header_length = self._content_length = self._auth = None
            self._expect = False
            if self.deadline is None or self._phase == "keep-alive":  # a later request on a kept-alive connection
                self._phase, self.deadline = "headers", self.loop.time() + limits.header_timeout_s

        def on_url(self, url: bytes) -> None:
            self._url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            name = name.lower()
            if name == b"content-length":
                self._content_length = value
            elif name == b"inference-header-content-length":
                self._header_length = value
            elif name == b"authorization":
                self._auth = value
            elif name == b"expect" and value.lower() == b"100-continue":
                self._expect = True

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._phase, self.deadline = "body", self.loop.time() + limits.body_timeout_s
            parser = self.parser
            if self.transport.is_closing() or parser.should_upgrade():  # an upgrade is refused in data_received
                return
            if not self._admitted:
                body = reply(503, f"the server holds {len(guard.open)} connections (limit "
                                  f"{guard.max_connections}), all busy; retry later", retry_after=True)
                self.transport.write(body)
                self.close()
                return
            url = self._url
            raw = url.split(b"?", 1)[0] if url[:1] == b"/" else httptools.parse_url(url).path or b"/"
            path = raw.decode("latin-1")  # the parser lets only visible ASCII through
            if "%" in path:
                path = urllib.parse.unquote(path)
            request = Request(self, parser.get_method().decode("ascii"), path, self._header_length,
                              self._content_length, self._auth,
                              parser.get_http_version() != "1.0" and parser.should_keep_alive(), self._expect)
            self.parsing = request
            if self.current is None:
                self._start(request)
            else:
                self.queued.append(request)
                self.pause_reading()

        def on_body(self, body: bytes) -> None:
            request = self.parsing
            if request is None or request.answered:
                return
            request.chunks.append(body)
            request.buffered += len(body)
            if request.buffered > HIGH_WATER_BYTES:
                self.pause_reading()
            request.wake()

        def on_message_complete(self) -> None:
            self.deadline = None
            request, self.parsing = self.parsing, None
            if request is not None:
                request.complete = True
                request.wake()
            self._keep_alive_deadline()

        # --- answering -----------------------------------------------------------------------------------
        def _start(self, request: Request) -> None:
            self.current = request
            task = self.loop.create_task(self._answer(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        async def _answer(self, request: Request) -> None:
            t0 = perf_counter()
            ctx = RequestContext()
            try:
                status, headers, parts, size = await app.answer(
                    ctx, request.method, request.path, request.header_length, request.content_length,
                    request.auth, request.receive)
                await self._send(request, status, headers, parts)
                del parts
                app.answered(ctx, self.client, request.method, request.path, status, size, t0)
            except asyncio.CancelledError:  # the server stopped waiting for it (a forced shutdown)
                self.close()
                raise
            except Exception:  # noqa: BLE001 - a bug: this connection goes, the server stays
                log.exception("internal error answering %s %s", request.method, request.path)
                self.close()
            finally:
                self._answered(request)

        async def _send(self, request: Request, status: int, headers, parts: list) -> None:
            last = self.eof and not self.queued
            if last:
                request.keep_alive = False
            head = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
            for name, value in headers:
                head.append(b"%s: %s\r\n" % (name, value))
            if not request.keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            head = b"".join(head)
            transport = self.transport
            if transport.is_closing():
                return
            if request.method == "HEAD":
                parts = ()
            if len(parts) == 1 and len(parts[0]) < ONE_WRITE_BELOW_BYTES:
                transport.write(head + parts[0])
            else:
                transport.write(head)
                for part in parts:
                    while self.write_paused and not transport.is_closing():
                        self.drained = self.loop.create_future()
                        await self.drained
                    if transport.is_closing():
                        return
                    transport.write(part)
            if not request.keep_alive:
                self.close()

        def _answered(self, request: Request) -> None:
            request.answered = True
            request.chunks = []
            if self.current is request:
                self.current = None
            if self.transport.is_closing():
                return
            if self.queued:
                nxt = self.queued.popleft()
                if not self.queued:
                    self.resume_reading()
                self._start(nxt)
            else:
                if self.eof:
                    self.close()
                    return
                self.resume_reading()
                self._keep_alive_deadline()

        def _keep_alive_deadline(self) -> None:
            """Nothing being answered, arriving or queued: the keep-alive timeout runs."""
            if self.current is None and self.parsing is None and not self.queued and not self._in_headers:
                self._phase, self.deadline = "keep-alive", self.loop.time() + limits.keep_alive_timeout_s

        # --- what the guard, the requests and uvicorn's Server call ------------------------------------------
        @property
        def idle(self) -> bool:
            """No request being answered: an idle keep-alive connection, or one still sending headers."""
            return self.current is None and not self.queued

        def write(self, data: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(data)

        def pause_reading(self) -> None:
            if not self.read_paused and not self.transport.is_closing():
                self.read_paused = True
                self.transport.pause_reading()

        def resume_reading(self) -> None:
            if self.read_paused and not self.queued and not self.transport.is_closing():
                self.read_paused = False
                self.transport.resume_reading()

        def close(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def shutdown(self) -> None:
            """The server drains: close when idle, else after the response being written."""
            if self.current is None:
                self.close()
            else:
                self.current.keep_alive = False
                self.queued.clear()

        def expired(self) -> None:
            """The deadline of the current phase (headers, body or keep-alive) has passed."""
            self.deadline = None
            if self.transport.is_closing():
                return
            phase = self._phase
            if phase == "keep-alive":
                self.close()
                return
            seconds = limits.header_timeout_s if phase == "headers" else limits.body_timeout_s
            guard.drop("timeout")
            if phase == "body" and self.parsing is not None and self.parsing.answered:
                self.close()  # the app already answered (e.g. 413 before reading the body): just stop listening
            elif phase == "body" or self._header_bytes:
                self.transport.write(reply(408, f"the request {phase} did not arrive within {seconds:g} s"))
                self.close()
            else:
                self.close()  # connected and sent nothing

        def _reject(self, status: int, message: str) -> None:
            guard.drop("rejected")
            if not self.transport.is_closing():
                self.transport.write(reply(status, message))
                self.close()

    return Http1Connection
