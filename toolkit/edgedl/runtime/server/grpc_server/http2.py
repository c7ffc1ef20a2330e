"""gRPC over HTTP/2 (cleartext, prior knowledge - what gRPC clients speak to an insecure port) on an asyncio
protocol: the frames and flow control of RFC 9113, HPACK through the ``hpack`` library (python-hyper's codec:
Huffman coding and the dynamic table), and the gRPC wire rules on top (length-prefixed messages, gzip/deflate
requests, ``grpc-timeout``, status in trailers).

Why not grpcio's server: on one core, with h2load as the client (32 connections, one call in flight on each;
benchmarks/grpc_bench.py), grpcio's asyncio server answering a canned reply with no model does about 3,500 calls/s,
half of what this layer does with the zoo CNN running behind it (7,300), and less than the HTTP/1.1 endpoint
(6,000); python-hyper's ``h2`` state machine measured no better than grpcio. A server needs a small part of
HTTP/2 (no push, no priorities, no client role). Every frame is checked before it is used: a peer that breaks
the protocol gets GOAWAY with the RFC's error code and the connection closes; a stream that breaks it gets
RST_STREAM; limits bound what one connection can make the server hold (header bytes, message bytes, concurrent
streams, queued stream messages, unsent output while the peer does not read).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger("edgedl.serve")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB
# gRPC status codes
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 3, 4, 5, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16

FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits: high byte, low 16), type, flags, stream id
MAX_FRAME = 16_384  # what this server reads (the protocol's default) and sends at most
MAX_WINDOW = 2 ** 31 - 1
STREAM_WINDOW = 1 << 20  # each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE)
CONNECTION_WINDOW = 1 << 24  # the connection's receive window, widened from the protocol's 65,535 at the start
MAX_STREAMS = 256  # concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
STREAM_BACKLOG = 128  # messages of one stream received but not yet taken by its handler; beyond, its window waits
MAX_RESETS = 1000  # streams a client may reset beyond the ones it let finish ("rapid reset", CVE-2023-44487)
BLOCK_CACHE = 64  # decoded header blocks remembered per connection
OUTPUT_BACKLOG = 1 << 20  # a stream's answers held unsent (the peer's window is shut) before it stops taking requests
WRITE_HIGH = 4 << 20  # unsent bytes at which a connection stops reading until the peer catches up
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC: compressed flag, length
TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
DECOMPRESSORS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = b"identity,deflate,gzip"
CALL_HEADERS = frozenset((b":path", b":method", b"content-type", b"authorization", b"grpc-timeout", b"grpc-encoding"))


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """One header as an HPACK literal without indexing (new name): the peer's table does not change, so every
    block this server sends is independent of the ones before it."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def percent_encode(text: str, limit: int = 4096) -> bytes:
    """grpc-message: UTF-8 with every byte outside printable ASCII (and '%') as %XX; long texts are cut."""
    raw = text.encode("utf-8", "replace")[:limit]
    return b"".join(bytes([c]) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in raw)


STATUS_200 = b"\x88"  # :status 200, static table entry 8
RESPONSE_HEADERS = STATUS_200 + literal(b"content-type", b"application/grpc") \
    + literal(b"grpc-accept-encoding", ACCEPT_ENCODING)
TRAILERS_OK = literal(b"grpc-status", b"0")


def status_block(code: int, message: str, headers: bool) -> bytes:
    """Trailers with a status; ``headers``: a trailers-only response (the call failed before any message)."""
    block = (RESPONSE_HEADERS if headers else b"") + literal(b"grpc-status", str(code).encode())
    return block + literal(b"grpc-message", percent_encode(message)) if message else block


class RpcError(Exception):
    """A call that ends with a gRPC status other than OK, raised by a handler or by this layer."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Method:
    """One RPC: ``decode(bytes)`` -> request, ``encode(response)`` -> bytes; ``call(request)`` -> response for
    unary, ``call(requests)`` -> async iterator of responses for streaming; ``public``: no API key needed."""

    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    call: Callable
    streaming: bool = False
    public: bool = False


@dataclass(frozen=True)
class Endpoint:
    """What every connection of one gRPC server shares."""

    methods: dict[bytes, Method]  # by :path, b"/package.Service/Method"
    status_of: Callable[[BaseException], tuple[int, str]]  # a handler's exception -> (gRPC code, message)
    authorized: Callable[[bytes | None], bool] | None  # the authorization header -> allowed (None: no key)
    max_message_bytes: int
    max_header_bytes: int
    handshake_timeout_s: float
    max_connections: int


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = ("sid", "method", "encoding", "buf", "queue", "queued", "owed", "unacked", "remote_closed", "task",
                 "send_window", "pending", "pending_bytes", "drained", "headers_sent", "done", "deadline", "waiting")

    def __init__(self, sid: int, send_window: int):
        self.sid, self.send_window = sid, send_window
        self.method: Method | None = None
        self.encoding = b"identity"
        self.buf = bytearray()  # message bytes received and not yet split into messages
        self.queue: deque | None = None  # streaming: messages not yet taken by the handler
        self.queued = 0  # their bytes
        self.owed = 0  # received bytes whose stream WINDOW_UPDATE waits for the handler (a full backlog)
        self.unacked = 0  # received bytes not yet granted back (granted in steps of a quarter window)
        self.remote_closed = False
        self.task: asyncio.Task | None = None
        self.pending: deque[bytes] = deque()  # framed output (DATA payloads, then b"" + a trailer block) unsent
        self.pending_bytes = 0  # the DATA payload bytes in it
        self.drained: asyncio.Future | None = None  # a streaming handler waiting for them to go out
        self.headers_sent = self.done = False
        self.deadline: asyncio.TimerHandle | None = None
        self.waiting: asyncio.Future | None = None  # the streaming handler waiting for a message


class Connection(asyncio.Protocol):
    """One HTTP/2 connection of a gRPC server."""

    def __init__(self, endpoint: Endpoint, connections: set):
        self.endpoint, self.connections = endpoint, connections
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.settled = False  # the client's first SETTINGS (the end of its preface) arrived
        self.decoder = Decoder()
        self.decoder.max_header_list_size = endpoint.max_header_bytes
        self.streams: dict[int, _Stream] = {}
        self.last_sid = 0
        self.header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments) awaiting CONTINUATION
        self.send_window = 65_535  # the connection's, as the peer grants it
        self.unacked = 0  # bytes received on the connection not yet granted back
        self.resets = self.finished = 0  # streams the client reset / streams this server answered
        self.blocks: dict[bytes, list] = {}  # decoded header blocks, while the HPACK table does not change
        self.table_state = None
        self.peer_stream_window = 65_535
        self.peer_max_frame = MAX_FRAME
        self.out: list[bytes] = []  # frames written at the end of this data_received / callback
        self.flush_scheduled = False
        self.blocked: dict[int, _Stream] = {}  # streams with output waiting for a window
        self.closing = False  # GOAWAY sent
        self.idle: asyncio.Event | None = None  # set when the last stream ends while draining
        self.handshake: asyncio.TimerHandle | None = None

    # --- connection ------------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        if len(self.connections) >= self.endpoint.max_connections:
            transport.write(self._goaway(REFUSED_STREAM, b"too many connections"))
            transport.close()
            return
        self.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        settings = struct.pack(">HIHIHI", 0x3, MAX_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW,
                               0x6, self.endpoint.max_header_bytes)
        transport.write(frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - 65_535)))
        self.handshake = self.loop.call_later(self.endpoint.handshake_timeout_s, self._handshake_expired)

    def _handshake_expired(self) -> None:
        if not self.preface or not self.last_sid:  # no preface, or no call within the header timeout
            self._fail(_ConnectionError(NO_ERROR, "no request within the header timeout"))

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        if self.handshake is not None:
            self.handshake.cancel()
        for stream in list(self.streams.values()):
            self._drop(stream)
        self.streams.clear()
        if self.idle is not None:
            self.idle.set()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except _ConnectionError as exc:
            self._fail(exc)
        except Exception:  # noqa: BLE001 - a bug here must not leave the peer hanging
            log.exception("internal error on a gRPC connection")
            self._fail(_ConnectionError(INTERNAL_ERROR, "internal error"))
        self._flush()

    def _fail(self, exc: _ConnectionError) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.out.append(self._goaway(exc.code, str(exc).encode()[:256]))
        self._flush()
        self.transport.close()

    def _goaway(self, code: int, debug: bytes = b"") -> bytes:
        self.closing = True
        return frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, code) + debug)

    def drain(self) -> asyncio.Event:
        """Stop taking calls (GOAWAY: no new stream): the event is set when the streams in flight are done."""
        self.idle = asyncio.Event()
        if not self.closing and self.transport is not None and not self.transport.is_closing():
            self.out.append(self._goaway(NO_ERROR))
            self._flush()
        if not self.streams:
            self.idle.set()
        return self.idle

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
        self.out.clear()

    def _schedule_flush(self) -> None:
        """Output from a handler task: written once the callbacks of this loop iteration ran (several calls'
        responses in one send)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    # --- frames in -------------------------------------------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise _ConnectionError(PROTOCOL_ERROR, "not HTTP/2: a gRPC client speaks HTTP/2 with prior "
                                                           "knowledge (is this an HTTP/1.1 client on the gRPC port?)")
                return
            if buf[:len(PREFACE)] != PREFACE:
                raise _ConnectionError(PROTOCOL_ERROR, "not HTTP/2: a gRPC client speaks HTTP/2 with prior knowledge")
            del buf[:len(PREFACE)]
            self.preface = True
        pos, end = 0, len(buf)
        unpack = FRAME_HEADER.unpack_from
        try:
            while end - pos >= 9:
                high, low, kind, flags, sid = unpack(buf, pos)
                length = high << 16 | low
                if length > MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes (SETTINGS_MAX_FRAME_SIZE is "
                                                             f"{MAX_FRAME})")
                if end - pos - 9 < length:
                    break
                if not self.settled:
                    if kind != SETTINGS or flags & ACK:
                        raise _ConnectionError(PROTOCOL_ERROR, "the connection preface ends with SETTINGS")
                    self.settled = True
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid & 0x7FFFFFFF, payload)
        finally:
            del buf[:pos]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.header_block is not None and (kind != CONTINUATION or sid != self.header_block[0]):
            raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.header_block is None:
                raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            block = self.header_block[2]
            block += payload
            if len(block) > self.endpoint.max_header_bytes:
                raise _ConnectionError(COMPRESSION_ERROR, "header block too large")
            if flags & END_HEADERS:
                sid, first_flags, _ = self.header_block
                self.header_block = None
                self._header_block(sid, first_flags, bytes(block))
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid or len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR if len(payload) != 8 else PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not sid or len(payload) != 4:
                raise _ConnectionError(PROTOCOL_ERROR if not sid else FRAME_SIZE_ERROR, "bad RST_STREAM")
            if sid > self.last_sid:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self._drop(stream)
                self._stream_ended()
                self.resets += 1
                if self.resets > self.finished + MAX_RESETS:
                    raise _ConnectionError(ENHANCE_YOUR_CALM, "too many streams reset by the client")
        elif kind == PRIORITY:
            if not sid or len(payload) != 5:
                raise _ConnectionError(PROTOCOL_ERROR if not sid else FRAME_SIZE_ERROR, "bad PRIORITY")
        elif kind == GOAWAY:
            if sid or len(payload) < 8:
                raise _ConnectionError(PROTOCOL_ERROR, "bad GOAWAY")
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        # other frame types are ignored (RFC 9113 section 4.1)

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1:len(payload) - payload[0]]
        return payload

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta, self.peer_stream_window = value - self.peer_stream_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = min(value, 1 << 20)
            elif key == 0x2 and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
        self.out.append(frame(SETTINGS, ACK, 0))
        self._send_blocked()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a length other than 4")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            if sid > self.last_sid:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            stream = self.streams.get(sid)
            if stream is None:
                return
            if not increment:
                self._reset(stream, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(stream, FLOW_CONTROL_ERROR)
                return
        self._send_blocked()

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid or not sid % 2:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if not flags & END_HEADERS:
            self.header_block = (sid, flags, bytearray(payload))
            return
        self._header_block(sid, flags, payload)

    def _decode(self, block: bytes) -> list:
        """A header block's headers. A client sends the same block call after call once its headers are in the
        HPACK table (only references to it): such a block decodes to what it did last time as long as the table
        has not changed since, which the table's size and newest entry tell."""
        headers = self.blocks.get(block)
        if headers is not None:
            return headers
        entries = self.decoder.header_table.dynamic_entries
        before = (len(entries), id(entries[0]) if entries else None)
        try:
            headers = self.decoder.decode(block, raw=True)
        except HPACKError as exc:  # the decoder's table is unusable from here: the connection ends
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block ({type(exc).__name__})") from None
        after = (len(entries), id(entries[0]) if entries else None)
        if after != before or after != self.table_state:
            self.blocks.clear()  # the table changed: what was decoded before may mean something else now
            self.table_state = after
            if after != before:
                return headers
        if len(self.blocks) < BLOCK_CACHE:
            self.blocks[block] = headers
        return headers

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client end its half of the stream
            if stream.remote_closed:
                return self._reset(stream, STREAM_CLOSED)
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR, "a second header block without END_STREAM")
            self._end_of_input(stream)
            return
        if sid <= self.last_sid:
            return  # a stream this server already ended (its block was decoded: the table stays in step)
        self.last_sid = sid
        if self.closing:  # after GOAWAY: not taken (the client may retry it elsewhere)
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
            return
        if len(self.streams) >= MAX_STREAMS:
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
            return
        stream = _Stream(sid, self.peer_stream_window)
        self.streams[sid] = stream
        self._start(stream, headers)
        if flags & END_STREAM and not stream.done:
            self._end_of_input(stream)

    # --- calls -----------------------------------------------------------------------------------------------
    def _start(self, stream: _Stream, headers) -> None:
        found = {name: value for name, value in headers if name in CALL_HEADERS}
        path, method, content_type = found.get(b":path"), found.get(b":method"), found.get(b"content-type")
        auth, timeout = found.get(b"authorization"), found.get(b"grpc-timeout")
        encoding = found.get(b"grpc-encoding", b"identity")
        if method != b"POST" or path is None or not path.startswith(b"/"):
            return self._refuse_http(stream, b"405" if path is not None else b"400")
        if content_type is None or not content_type.startswith(b"application/grpc"):
            return self._refuse_http(stream, b"415")
        target = self.endpoint.methods.get(path)
        if target is None:
            return self._finish(stream, UNIMPLEMENTED, f"Method not found: {path.decode('latin-1')}")
        authorized = self.endpoint.authorized
        if authorized is not None and not target.public and not authorized(auth):
            return self._finish(stream, UNAUTHENTICATED,
                                "missing or wrong API key; send the metadata 'authorization: Bearer <key>'")
        if encoding != b"identity" and encoding not in DECOMPRESSORS:
            return self._finish(stream, UNIMPLEMENTED, f"message encoding '{encoding.decode('latin-1')}' is not "
                                                       "supported; use identity, deflate or gzip")
        stream.method, stream.encoding = target, encoding
        if timeout is not None:
            seconds = _timeout(timeout)
            if seconds is not None:
                stream.deadline = self.loop.call_later(seconds, self._expire, stream)
        if target.streaming:
            stream.queue = deque()
            stream.task = self.loop.create_task(self._streaming(stream))

    def _refuse_http(self, stream: _Stream, status: bytes) -> None:
        """Not a gRPC request: a plain HTTP status (as gRPC servers answer a wrong method or content-type)."""
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.sid, literal(b":status", status)))
        self._close_stream(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        self.unacked += flow  # the connection window reopens in large steps (one frame per half window)
        if self.unacked >= CONNECTION_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_sid:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is None:  # a stream this server already ended (answered or reset): the data is dropped
                return
            self._reset(stream, STREAM_CLOSED)
            return
        body = self._unpad(flags, payload)
        if stream.method is not None:
            stream.buf += body
            self._split(stream)
        if stream.done:
            return
        if flags & END_STREAM:
            pass  # nothing more comes on this stream: its window stays as it is
        elif stream.queue is not None and (len(stream.queue) >= STREAM_BACKLOG or stream.queued >= STREAM_WINDOW):
            stream.owed += flow  # the handler is behind: its window opens as it takes messages
        else:
            stream.unacked += flow
            if stream.unacked >= STREAM_WINDOW // 4:
                self.out.append(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", stream.unacked)))
                stream.unacked = 0
        if flags & END_STREAM:
            self._end_of_input(stream)

    def _split(self, stream: _Stream) -> None:
        """Whole messages out of the stream's bytes: a streaming call's go to its handler as they complete."""
        buf, limit = stream.buf, self.endpoint.max_message_bytes
        while len(buf) >= 5:
            compressed, length = MESSAGE_PREFIX.unpack_from(buf)
            if length > limit:
                return self._finish(stream, RESOURCE_EXHAUSTED,
                                    f"Received message larger than max ({length} vs. {limit})")
            if stream.queue is None:  # unary: the message is taken when the client ends its half
                if len(buf) > 5 + length:
                    self._finish(stream, INTERNAL, "a unary call carries exactly one request message")
                return
            if len(buf) < 5 + length:
                return
            message = self._message(stream, compressed, bytes(buf[5:5 + length]))
            del buf[:5 + length]
            if message is None:
                return
            stream.queue.append(message)
            stream.queued += 5 + len(message)
            if stream.queued > 2 * STREAM_WINDOW + limit:  # more than the windows it was given allow
                return self._reset(stream, FLOW_CONTROL_ERROR)
            if stream.waiting is not None:
                _resolve(stream.waiting)

    def _message(self, stream: _Stream, compressed: int, data: bytes) -> bytes | None:
        if not compressed:
            return data
        if compressed != 1 or stream.encoding == b"identity":
            self._finish(stream, INTERNAL, "a compressed message without a grpc-encoding (or a bad flag)")
            return None
        limit = self.endpoint.max_message_bytes
        inflate = zlib.decompressobj(DECOMPRESSORS[stream.encoding])
        try:
            out = inflate.decompress(data, limit + 1)
        except zlib.error:
            self._finish(stream, INTERNAL, f"the message is not valid {stream.encoding.decode()} data")
            return None
        if len(out) > limit:
            self._finish(stream, RESOURCE_EXHAUSTED, f"Received message larger than max (more than {limit} bytes "
                                                     "once decompressed)")
            return None
        return out

    def _end_of_input(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.done or stream.method is None:
            return
        if stream.queue is not None:  # streaming: the handler's iterator ends
            if stream.buf:
                return self._finish(stream, INTERNAL, "the stream ended inside a message")
            if stream.waiting is not None:
                _resolve(stream.waiting)
            return
        buf = stream.buf
        if len(buf) < 5 or len(buf) != 5 + MESSAGE_PREFIX.unpack_from(buf)[1]:
            return self._finish(stream, INTERNAL, "a unary call carries exactly one request message")
        message = self._message(stream, buf[0], bytes(buf[5:]))
        stream.buf = bytearray()
        if message is not None:
            stream.task = self.loop.create_task(self._unary(stream, message))

    async def _unary(self, stream: _Stream, message: bytes) -> None:
        method = stream.method
        try:
            try:
                request = method.decode(message)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError and its kin
                raise RpcError(INVALID_ARGUMENT, "the request message is not a valid protobuf message of this "
                                                 "method's request type") from None
            response = method.encode(await method.call(request))
        except asyncio.CancelledError:
            return  # reset by the client, the deadline, or the server stopping: answered there
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a dropped call
            code, text = _status(self.endpoint, exc)
            self._finish(stream, code, text)
        else:
            self._send_message(stream, response)
            self._finish(stream, OK, "")
        self._schedule_flush()

    async def _streaming(self, stream: _Stream) -> None:
        method = stream.method
        try:
            async for response in method.call(self._messages(stream)):
                self._send_message(stream, method.encode(response))
                self._schedule_flush()
                if stream.pending_bytes > OUTPUT_BACKLOG:  # the peer does not read: take no more answers for now
                    stream.drained = self.loop.create_future()
                    await stream.drained
                    stream.drained = None
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001
            code, text = _status(self.endpoint, exc)
            self._finish(stream, code, text)
        else:
            self._finish(stream, OK, "")
        self._schedule_flush()

    async def _messages(self, stream: _Stream):
        decode = stream.method.decode
        while True:
            if stream.queue:
                message = stream.queue.popleft()
                stream.queued -= 5 + len(message)
                if stream.owed and len(stream.queue) < STREAM_BACKLOG // 2 and stream.queued < STREAM_WINDOW // 2:
                    granted = struct.pack(">I", stream.owed + stream.unacked)
                    self.out.append(frame(WINDOW_UPDATE, 0, stream.sid, granted))
                    stream.owed = stream.unacked = 0
                    self._schedule_flush()
                try:
                    request = decode(message)
                except Exception:  # noqa: BLE001
                    raise RpcError(INVALID_ARGUMENT, "a request message is not a valid protobuf message of this "
                                                     "method's request type") from None
                yield request
            elif stream.remote_closed or stream.done:
                return
            else:
                stream.waiting = self.loop.create_future()
                await stream.waiting
                stream.waiting = None

    def _expire(self, stream: _Stream) -> None:
        stream.deadline = None
        if not stream.done:
            if stream.task is not None:
                stream.task.cancel()
            self._finish(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._flush()

    # --- frames out ------------------------------------------------------------------------------------------
    def _send_message(self, stream: _Stream, payload: bytes) -> None:
        if stream.done:
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self.out.append(frame(HEADERS, END_HEADERS, stream.sid, RESPONSE_HEADERS))
        data = MESSAGE_PREFIX.pack(0, len(payload)) + payload
        n = len(data)
        if not stream.pending and n <= self.peer_max_frame and n <= stream.send_window and n <= self.send_window:
            stream.send_window -= n
            self.send_window -= n
            self.out.append(frame(DATA, 0, stream.sid, data))
            return
        view = memoryview(data)
        for i in range(0, n, self.peer_max_frame):
            stream.pending.append(bytes(view[i:i + self.peer_max_frame]))
        stream.pending_bytes += n
        self._send_pending(stream)

    def _finish(self, stream: _Stream, code: int, message: str) -> None:
        """End the call with a status: trailers after its messages (trailers-only when none was sent)."""
        if stream.done:
            return
        stream.done = True
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if stream.waiting is not None:
            _resolve(stream.waiting)
        if not stream.headers_sent:  # trailers-only
            stream.headers_sent = True
            block = status_block(code, message, True)
        else:
            block = TRAILERS_OK if code == OK else status_block(code, message, False)
        trailer = frame(HEADERS, END_HEADERS | END_STREAM, stream.sid, block)
        if stream.pending:
            stream.pending.append(b"")  # the marker: what follows is the trailer
            stream.pending.append(trailer)
            return
        self.out.append(trailer)
        if not stream.remote_closed:  # the client still sending: tell it to stop (RFC 9113 section 8.1)
            self.out.append(frame(RST_STREAM, 0, stream.sid, struct.pack(">I", NO_ERROR)))
        self._close_stream(stream)

    def _send_pending(self, stream: _Stream) -> None:
        pending = stream.pending
        while pending:
            chunk = pending[0]
            if chunk == b"":  # the trailer follows the last data
                pending.popleft()
                self.out.append(pending.popleft())
                if not stream.remote_closed:
                    self.out.append(frame(RST_STREAM, 0, stream.sid, struct.pack(">I", NO_ERROR)))
                self.blocked.pop(stream.sid, None)
                self._close_stream(stream)
                return
            room = min(stream.send_window, self.send_window)
            if room <= 0:
                self.blocked[stream.sid] = stream
                return
            if len(chunk) > room:
                pending[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                pending.popleft()
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            stream.pending_bytes -= len(chunk)
            self.out.append(frame(DATA, 0, stream.sid, chunk))
            if stream.drained is not None and stream.pending_bytes <= OUTPUT_BACKLOG // 2:
                _resolve(stream.drained)
        self.blocked.pop(stream.sid, None)

    def _send_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self._send_pending(stream)

    def _reset(self, stream: _Stream, code: int) -> None:
        self.out.append(frame(RST_STREAM, 0, stream.sid, struct.pack(">I", code)))
        self.streams.pop(stream.sid, None)
        self._drop(stream)
        self._stream_ended()

    def _drop(self, stream: _Stream) -> None:
        stream.done = True
        stream.pending.clear()
        stream.pending_bytes = 0
        if stream.drained is not None:
            _resolve(stream.drained)
        self.blocked.pop(stream.sid, None)
        if stream.deadline is not None:
            stream.deadline.cancel()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.waiting is not None:
            _resolve(stream.waiting)

    def _close_stream(self, stream: _Stream) -> None:
        stream.done = True
        self.finished += 1
        if self.streams.pop(stream.sid, None) is not None:
            self._stream_ended()

    def _stream_ended(self) -> None:
        if self.idle is not None and not self.streams:
            self.idle.set()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _timeout(value: bytes) -> float | None:
    """grpc-timeout: 1-8 digits and a unit (H M S m u n); None for a malformed value (ignored, as grpc does)."""
    unit = TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


def _status(endpoint: Endpoint, exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, RpcError):
        return exc.code, exc.message
    return endpoint.status_of(exc)
