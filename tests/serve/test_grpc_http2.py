"""`edgedl serve --grpc-port`: the server's own HTTP/2 layer (runtime/server/grpc_server/http2.py), driven frame by
frame over loopback. python-hyper's h2 is the client for well-formed traffic (its bytes re-cut where a test needs
frames h2 never makes: CONTINUATION, padded HEADERS); raw frames carry the protocol errors and the abuse h2 refuses
to send. After every test tritonclient.grpc checks, on a new connection, that the server still answers a good call.

The constants below are RFC 9113's and gRPC's, written out here rather than imported from the code under test."""

from __future__ import annotations

import gzip
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from serve_helpers import Reference, ServerProcess, free_port, gemm_model, place, slow_model

TIMEOUT = 10.0  # every socket, and every loop that waits for the server
MAX_BODY = 256 * 1024  # --max-body-bytes: the server's gRPC message limit
HEADER_TIMEOUT = 2.0  # --header-timeout: how long a connection may stay without a call
KEY = "h2-test-key"
SERVICE = b"/inference.GRPCInferenceService/"

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x3, 0x4, 0x5, 0x6
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x5, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x7, 0x8, 0x9
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAUTHENTICATED = 0, 3, 4, 8, 12, 13, 16


# --- the wire ------------------------------------------------------------------------------------------------
def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def split_frames(buf: bytes) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """The whole frames at the start of ``buf`` as (type, flags, stream, payload), and the bytes left over."""
    frames = []
    while len(buf) >= 9 and len(buf) >= 9 + (n := int.from_bytes(buf[:3], "big")):
        frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]))
        buf = buf[9 + n:]
    return frames, buf


HELLO = PREFACE + frame(SETTINGS, 0, 0)  # a client's preface with empty SETTINGS


def connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    if receive_buffer:  # set before connecting: the TCP window follows it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    return sock


def raw_frames(sock: socket.socket):
    """The server's frames as they arrive, until it closes the connection (at most TIMEOUT seconds)."""
    buf, end = b"", time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        frames, buf = split_frames(buf)
        yield from frames
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return
        if not chunk:
            return
        buf += chunk
    raise AssertionError(f"the server kept the connection open for more than {TIMEOUT} s")


def server_settings(frames) -> dict[int, int]:
    """The server's first frame, its SETTINGS, as {identifier: value}."""
    kind, flags, _, payload = next(frames)
    assert (kind, flags) == (SETTINGS, 0)
    return dict(struct.iter_unpack(">HI", payload))


def goaway(frames: list) -> tuple[int, int]:
    """The connection's last frame, a GOAWAY: (last stream id, error code)."""
    kind, _, sid, payload = frames[-1]
    assert (kind, sid) == (GOAWAY, 0), frames[-3:]
    return struct.unpack_from(">II", payload)


def request_headers(rpc: str = "ModelInfer", method=b"POST", content_type=b"application/grpc", extra=()) -> list:
    return [(b":method", method), (b":scheme", b"http"), (b":path", SERVICE + rpc.encode()),
            (b":authority", b"127.0.0.1"), (b"content-type", content_type), (b"te", b"trailers"), *extra]


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", compressed, len(payload)) + payload


def infer_request(model: str, rows: np.ndarray, request_id: str = "") -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=rows.shape)
    request.raw_input_contents.append(rows.tobytes())
    return request.SerializeToString()


ROWS = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)  # for the "gemm" model
GOOD = infer_request("gemm", ROWS)
SLOW = infer_request("slow", np.ones((16, 512), np.float32))  # tens of ms of work


# --- an h2 client ------------------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One stream's response as the client saw it."""

    headers: dict = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    trailers: dict = field(default_factory=dict)
    reset: int | None = None  # the server's RST_STREAM code
    ended: bool = False

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    @property
    def grpc_status(self) -> int | None:  # from the trailers, or the headers of a trailers-only response
        value = self.trailers.get(b"grpc-status", self.headers.get(b"grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return unquote(self.trailers.get(b"grpc-message", self.headers.get(b"grpc-message", b"")).decode())

    def messages(self) -> list[bytes]:
        """The whole gRPC messages received so far."""
        out, data = [], bytes(self.data)
        while len(data) >= 5 and len(data) >= 5 + (n := struct.unpack_from(">I", data, 1)[0]):
            assert data[0] == 0, "the server compressed a response it was not asked to"
            out.append(data[5:5 + n])
            data = data[5 + n:]
        return out


class Client:
    """One HTTP/2 connection with h2 as the client; ``rewrite`` (bytes -> bytes) re-cuts what h2 sends."""

    def __init__(self, port: int, settings: dict | None = None, receive_buffer: int | None = None):
        self.sock = connect(port, receive_buffer)
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.replies: dict[int, Reply] = {}
        self.pings: list[bytes] = []
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.seen: list[tuple[int, int]] = []  # (type, stream) of every frame received, as h2 hides some
        self._unparsed = b""
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def flush(self, rewrite=None) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(rewrite(data) if rewrite else data)

    def send(self, body: bytes, headers: list | None = None, end: bool = True, rewrite=None,
             trailers: list | None = None, reset: int | None = None, **cut) -> int:
        """A new stream: HEADERS, then ``body`` in DATA frames (``cut``: as for send_data), then ``trailers``
        (which end the client's half instead of the last DATA frame), then RST_STREAM ``reset``, all in one
        write; -> its id."""
        sid = self.h2.get_next_available_stream_id()
        self.replies[sid] = Reply()
        end_with_data = end and not trailers
        self.h2.send_headers(sid, headers or request_headers(), end_stream=end_with_data and not body)
        self._queue_data(sid, body, end_with_data, **cut)
        if trailers:
            self.h2.send_headers(sid, trailers, end_stream=True)
        if reset is not None:
            self.h2.reset_stream(sid, reset)
        self.flush(rewrite)
        return sid

    def send_data(self, sid: int, body: bytes, end: bool = True, **cut) -> None:
        self._queue_data(sid, body, end, **cut)
        self.flush()

    def _queue_data(self, sid: int, body: bytes, end: bool, chunk: int = 16_384, pad: int | None = None) -> None:
        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        for i, piece in enumerate(pieces):
            self.h2.send_data(sid, piece, end_stream=end and i == len(pieces) - 1, pad_length=pad)

    def pump(self, until, on_data=None) -> None:
        """Read and record the server's frames until ``until()`` or the connection ends (at most TIMEOUT s);
        ``on_data(event)`` instead of giving every DATA byte back to the server's windows at once."""
        end = time.monotonic() + TIMEOUT
        while not until() and self.terminated is None:
            assert time.monotonic() < end, f"no answer within {TIMEOUT} s: {self.replies}"
            self.flush()
            data = self.sock.recv(65536)
            if not data:
                break
            frames, self._unparsed = split_frames(self._unparsed + data)
            self.seen += [(kind, sid) for kind, _, sid, _ in frames]
            for event in self.h2.receive_data(data):
                self._record(event, on_data or self._give_back)
        self.flush()

    def read(self, sid: int, until=None, on_data=None) -> Reply:
        reply = self.replies[sid]
        self.pump(lambda: (until or (lambda r: r.ended))(reply), on_data)
        return reply

    def _give_back(self, event: h2.events.DataReceived) -> None:
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _record(self, event, on_data) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings.append(event.ping_data)
        reply = self.replies.get(getattr(event, "stream_id", None))
        if reply is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            reply.headers = dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            reply.trailers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            reply.data += event.data
            on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset):
            reply.reset, reply.ended = event.error_code, True


def rewrite_headers(piece: int | None = None, pad: int = 0, priority: bool = False):
    """A ``rewrite`` that re-cuts h2's HEADERS frames: the block in pieces of ``piece`` bytes (HEADERS +
    CONTINUATION frames), ``pad`` bytes of padding on the HEADERS frame, and its priority fields."""

    def rewrite(data: bytes) -> bytes:
        frames, rest = split_frames(data)
        assert not rest
        out = []
        for kind, flags, sid, payload in frames:
            if kind != HEADERS:
                out.append(frame(kind, flags, sid, payload))
                continue
            pieces = [payload[i:i + piece] for i in range(0, len(payload), piece)] if piece else [payload]
            first, first_flags = pieces[0], flags & ~END_HEADERS if len(pieces) > 1 else flags
            if priority:  # exclusive bit clear, depends on stream 0, weight 16
                first, first_flags = struct.pack(">IB", 0, 15) + first, first_flags | PRIORITY_FLAG
            if pad:
                first, first_flags = bytes([pad]) + first + bytes(pad), first_flags | PADDED
            out.append(frame(HEADERS, first_flags, sid, first))
            out += [frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, sid, p)
                    for i, p in enumerate(pieces) if i]
        return b"".join(out)

    return rewrite


def with_noise(data: bytes) -> bytes:
    """A ``rewrite`` that puts a PRIORITY frame and a frame of an unknown type (both to be ignored) before each
    DATA frame."""
    frames, rest = split_frames(data)
    assert not rest
    return b"".join((frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 15)) + frame(0xFA, 0, sid, b"ignore me")
                     if kind == DATA else b"") + frame(kind, flags, sid, payload)
                    for kind, flags, sid, payload in frames)


def output(response) -> np.ndarray:
    """The first output of a ModelInferResponse as an array."""
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(response.outputs[0].shape)


def assert_answer(reply: Reply, expected: np.ndarray) -> None:
    """A complete, successful ModelInfer: 200, one response message with ``expected``, trailers grpc-status 0."""
    assert (reply.ended, reply.reset, reply.status, reply.grpc_status) == (True, None, 200, OK), reply
    assert reply.headers[b"content-type"] == b"application/grpc" and reply.trailers == {b"grpc-status": b"0"}
    [message] = reply.messages()
    np.testing.assert_allclose(output(service_pb2.ModelInferResponse.FromString(message)), expected,
                               rtol=1e-5, atol=1e-5)


# --- the servers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple:
    """(repository, model paths): gemm [b,64]->[b,10], wide [b,4]->[b,2048] (8 KB of output a row), slow."""
    d = tmp_path_factory.mktemp("grpc_h2")
    paths = {"gemm": gemm_model(d / "gemm.onnx", seed=1, in_name="x", out_name="y"),
             "wide": gemm_model(d / "wide.onnx", seed=2, in_name="x", out_name="y", n_in=4, n_out=2048),
             "slow": slow_model(d / "slow.onnx", depth=192)}  # ms a row: never run on the event loop
    for name, path in paths.items():
        place(d / "models", name, 1, path)
    return d / "models", paths


def serve(repo, *extra) -> ServerProcess:
    port = free_port()
    server = ServerProcess("--model-repository", repo, "--grpc-port", port, "--threads", 1, *extra)
    server.grpc_port = port
    return server


@pytest.fixture(scope="module")
def server(models):
    with serve(models[0], "--max-body-bytes", MAX_BODY, "--header-timeout", HEADER_TIMEOUT) as s:
        yield s


@pytest.fixture(scope="module")
def expected(models) -> np.ndarray:
    return Reference()(models[1]["gemm"], {"x": ROWS})["y"]


def assert_triton_answers(server, expected) -> None:
    """tritonclient's good call, on a new connection, gets the right answer."""
    assert server.proc.poll() is None, server.stderr
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
        x = grpcclient.InferInput("x", list(ROWS.shape), "FP32")
        x.set_data_from_numpy(ROWS)
        got = client.infer("gemm", [x], client_timeout=TIMEOUT).as_numpy("y")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def answers_afterwards(server, expected):
    """Whatever a test did, the server then still answers a good call."""
    yield
    assert_triton_answers(server, expected)


# --- well-formed calls -----------------------------------------------------------------------------------------
def test_a_unary_call_by_hand(server, expected):
    client = Client(server.grpc_port)
    reply = client.read(client.send(grpc_message(GOOD)))
    assert_answer(reply, expected)
    response = service_pb2.ModelInferResponse.FromString(reply.messages()[0])
    assert (response.model_name, response.model_version, [o.name for o in response.outputs]) == ("gemm", "1", ["y"])


FRAMINGS = {  # case -> how Client.send cuts the call
    "message in 7-byte DATA frames": dict(chunk=7),
    "headers in HEADERS + 10-byte CONTINUATION frames": dict(rewrite=rewrite_headers(piece=10)),
    "padded DATA frames": dict(chunk=300, pad=255),
    "padded HEADERS": dict(rewrite=rewrite_headers(pad=100)),
    "HEADERS with priority fields": dict(rewrite=rewrite_headers(priority=True)),
    "all of them at once": dict(chunk=7, pad=3, rewrite=rewrite_headers(piece=5, pad=9, priority=True)),
    "PRIORITY and unknown frame types in between": dict(chunk=50, rewrite=with_noise),
    "the client's trailers end its half": dict(trailers=[(b"x-checksum", b"0")]),
}


@pytest.mark.parametrize("case", list(FRAMINGS))
def test_a_call_cut_or_padded_any_way_is_answered(server, expected, case):
    client = Client(server.grpc_port)
    for _ in range(2):  # the second header block refers to the HPACK table the first one filled
        assert_answer(client.read(client.send(grpc_message(GOOD), **FRAMINGS[case])), expected)


BOMB = gzip.compress(bytes(4 * MAX_BODY))  # about 1 KB that inflates to four times the message limit
CALLS = {  # case -> (request headers, request body, :status, grpc-status)
    "gzip": (request_headers(extra=[(b"grpc-encoding", b"gzip")]), grpc_message(gzip.compress(GOOD), True), 200, OK),
    "deflate": (request_headers(extra=[(b"grpc-encoding", b"deflate")]), grpc_message(zlib.compress(GOOD), True),
                200, OK),
    "gzip header, message not compressed": (request_headers(extra=[(b"grpc-encoding", b"gzip")]), grpc_message(GOOD),
                                            200, OK),
    "unknown grpc-encoding": (request_headers(extra=[(b"grpc-encoding", b"snappy")]), grpc_message(GOOD, True), 200,
                              UNIMPLEMENTED),
    "compressed flag without grpc-encoding": (request_headers(), grpc_message(gzip.compress(GOOD), True), 200, INTERNAL),
    "gzip bomb": (request_headers(extra=[(b"grpc-encoding", b"gzip")]), grpc_message(BOMB, True), 200,
                  RESOURCE_EXHAUSTED),
    "declared length above the limit": (request_headers(), struct.pack(">BI", 0, MAX_BODY + 1) + bytes(64), 200,
                                        RESOURCE_EXHAUSTED),
    "unknown method": (request_headers("NoSuchMethod"), grpc_message(GOOD), 200, UNIMPLEMENTED),
    "zero messages": (request_headers(), b"", 200, INTERNAL),
    "two messages": (request_headers(), grpc_message(GOOD) * 2, 200, INTERNAL),
    "message cut short": (request_headers(), grpc_message(GOOD)[:-1], 200, INTERNAL),
    "not protobuf": (request_headers(), grpc_message(b"\xff\xff\xff"), 200, INVALID_ARGUMENT),
    "wrong content-type": (request_headers(content_type=b"application/json"), grpc_message(GOOD), 415, None),
    "GET": (request_headers(method=b"GET"), b"", 405, None),
}


@pytest.mark.parametrize("case", list(CALLS))
def test_each_kind_of_call_gets_its_status(server, expected, case):
    headers, body, status, grpc_status = CALLS[case]
    client = Client(server.grpc_port)
    reply = client.read(client.send(body, headers))
    if grpc_status == OK:
        return assert_answer(reply, expected)
    assert (reply.ended, reply.status, reply.grpc_status, reply.messages()) == (True, status, grpc_status, []), reply
    assert (reply.grpc_message != "") == (grpc_status is not None), reply  # every failed call says why
    assert client.terminated is None
    assert_answer(client.read(client.send(grpc_message(GOOD))), expected)  # and the connection goes on


def test_stream_infer_by_hand(server, expected):
    """Three requests in one DATA frame, then one cut across many: four answers, then grpc-status 0 once the
    client ends its half."""
    client = Client(server.grpc_port)
    requests = [grpc_message(infer_request("gemm", ROWS, request_id=str(i))) for i in range(4)]
    sid = client.send(b"", request_headers("ModelStreamInfer"), end=False)
    client.send_data(sid, b"".join(requests[:3]), end=False)
    client.read(sid, until=lambda r: len(r.messages()) >= 3)
    client.send_data(sid, requests[3], end=False, chunk=9)
    client.read(sid, until=lambda r: len(r.messages()) >= 4)
    assert not client.replies[sid].ended
    client.h2.end_stream(sid)
    reply = client.read(sid)
    assert (reply.status, reply.grpc_status, reply.reset) == (200, OK, None), reply
    responses = [service_pb2.ModelStreamInferResponse.FromString(m) for m in reply.messages()]
    assert sorted(r.infer_response.id for r in responses) == ["0", "1", "2", "3"]
    for response in responses:
        assert response.error_message == ""
        np.testing.assert_allclose(output(response.infer_response), expected, rtol=1e-5, atol=1e-5)


def window_keeper(client: Client, granted: int, grant, step: int):
    """An ``on_data`` that checks the server never sends more than ``granted`` bytes of DATA and calls
    ``grant(step)`` (a WINDOW_UPDATE) only once the window is used up, so the server must wait for each one;
    -> (on_data, the sizes of the DATA frames received)."""
    sizes = []

    def on_data(event):
        nonlocal granted
        sizes.append(event.flow_controlled_length)
        assert sum(sizes) <= granted, f"{sum(sizes)} bytes of DATA for a window of {granted}"
        if sum(sizes) == granted:
            try:
                grant(step)
                granted += step
            except h2.exceptions.StreamClosedError:  # the stream's trailers came in the same read
                pass

    return on_data, sizes


def test_a_tiny_window_gets_the_whole_output_never_more_than_granted(server, models):
    """INITIAL_WINDOW_SIZE 16 and 16 KB of output: the server fills the window exactly, waits, and goes on with
    each WINDOW_UPDATE until the whole response is there."""
    rows = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    client = Client(server.grpc_port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
    sid = client.send(grpc_message(infer_request("wide", rows)))
    on_data, sizes = window_keeper(client, 16, lambda n: client.h2.increment_flow_control_window(n, stream_id=sid),
                                   1024)
    reply = client.read(sid, on_data=on_data)
    assert_answer(reply, Reference()(models[1]["wide"], {"x": rows})["y"])
    assert sizes[0] == 16 and max(sizes) <= 1024 and sum(sizes) == len(reply.data) > 16_384


def test_the_connection_window_is_shared_and_honoured(server, models):
    """Two calls of 64 KB of output each, large stream windows, and a connection window left at the protocol's
    65,535 until each time it is used up: both complete, never past the connection's window."""
    rows = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    client = Client(server.grpc_port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    sids = [client.send(grpc_message(infer_request("wide", rows))) for _ in range(2)]
    on_data, sizes = window_keeper(client, 65_535, client.h2.increment_flow_control_window, 65_535)
    replies = [client.read(sid, on_data=on_data) for sid in sids]
    for reply in replies:
        assert_answer(reply, Reference()(models[1]["wide"], {"x": rows})["y"])
    assert sum(sizes) == sum(len(r.data) for r in replies) > 65_535


def test_a_client_that_stops_reading_does_not_stall_the_server(server, models, expected):
    """96 calls of 128 KB of output each (12 MB, all within the client's windows) on a connection that reads
    nothing for a while: other connections are served meanwhile, and the client gets every answer once it reads."""
    rows = np.ones((16, 4), np.float32)
    client = Client(server.grpc_port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 31 - 1},
                    receive_buffer=65_536)
    client.h2.increment_flow_control_window(2 ** 31 - 1 - 65_535)
    sids = [client.send(grpc_message(infer_request("wide", rows))) for _ in range(96)]
    time.sleep(0.5)  # the server runs them all and is left with output the client does not take
    assert_triton_answers(server, expected)
    want = Reference()(models[1]["wide"], {"x": rows})["y"]
    for sid in sids:
        assert_answer(client.read(sid), want)
    assert_answer(client.read(client.send(grpc_message(GOOD))), expected)  # the server reads this client again


def test_client_reset_and_ping_leave_the_connection_usable(server, expected):
    client = Client(server.grpc_port)
    half = client.send(grpc_message(GOOD)[:100], end=False, reset=CANCEL)  # reset inside its message
    started = client.send(grpc_message(SLOW), reset=CANCEL)  # reset once its call is started
    client.h2.ping(b"edgedl\x00\xff")
    assert_answer(client.read(client.send(grpc_message(GOOD))), expected)
    client.pump(lambda: client.pings)
    assert client.pings == [b"edgedl\x00\xff"] and client.terminated is None
    assert [(kind, sid) for kind, sid in client.seen if sid in (half, started)] == []  # no answer after a reset


def test_grpc_timeout(server, expected):
    client = Client(server.grpc_port)
    late = client.read(client.send(grpc_message(SLOW), request_headers(extra=[(b"grpc-timeout", b"1m")])))
    assert (late.status, late.grpc_status, late.grpc_message, late.messages()) == (200, DEADLINE_EXCEEDED,
                                                                                   "Deadline Exceeded", []), late
    in_time = client.read(client.send(grpc_message(GOOD), request_headers(extra=[(b"grpc-timeout", b"10S")])))
    assert_answer(in_time, expected)


def test_api_key(models, expected):
    with serve(models[0], "--api-key", KEY) as keyed:
        client = Client(keyed.grpc_port)
        for auth in ([], [(b"authorization", b"Bearer wrong")], [(b"authorization", KEY.encode())]):
            refused = client.read(client.send(grpc_message(GOOD), request_headers(extra=auth)))
            assert (refused.status, refused.grpc_status) == (200, UNAUTHENTICATED), refused
            assert "Bearer <key>" in refused.grpc_message
        live = client.read(client.send(grpc_message(b""), request_headers("ServerLive")))  # needs no key
        assert (live.grpc_status, service_pb2.ServerLiveResponse.FromString(live.messages()[0]).live) == (OK, True)
        bearer = [(b"authorization", f"Bearer {KEY}".encode())]
        assert_answer(client.read(client.send(grpc_message(GOOD), request_headers(extra=bearer))), expected)


# --- protocol errors and abuse -------------------------------------------------------------------------------
def hpack_bomb(copies: int = 40) -> bytes:
    """A header block of under 3 KB that decodes to ``copies`` x 4 KB: one 4 KB header into the dynamic table,
    then one byte per copy (a reference to that entry, index 62)."""
    return hpack.Encoder().encode(request_headers() + [(b"x-big", b"a" * 4000)]) + b"\xbe" * copies


BLOCK = hpack.Encoder().encode(request_headers())  # a good header block for a new connection's first stream
PROTOCOL_ERRORS = {  # case -> (what the client sends, the GOAWAY's error code)
    "HTTP/1.1 request instead of the preface": (b"POST /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", PROTOCOL_ERROR),
    "frame header announcing 16385 bytes": (HELLO + (16_385).to_bytes(3, "big") + bytes([DATA, 0]) + bytes(4),
                                            FRAME_SIZE_ERROR),
    "DATA on stream 0": (HELLO + frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    "DATA on an idle stream": (HELLO + frame(DATA, END_STREAM, 1, b"x"), PROTOCOL_ERROR),
    "HEADERS on an even stream": (HELLO + frame(HEADERS, END_HEADERS | END_STREAM, 2, BLOCK), PROTOCOL_ERROR),
    "PING of 7 bytes": (HELLO + frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    "SETTINGS_MAX_FRAME_SIZE 16383": (HELLO + frame(SETTINGS, 0, 0, struct.pack(">HI", MAX_FRAME_SIZE, 16_383)),
                                      PROTOCOL_ERROR),
    "SETTINGS of 5 bytes": (HELLO + frame(SETTINGS, 0, 0, bytes(5)), FRAME_SIZE_ERROR),
    "SETTINGS_INITIAL_WINDOW_SIZE 2^31": (HELLO + frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 2 ** 31)),
                                          FLOW_CONTROL_ERROR),
    "WINDOW_UPDATE of 0 on the connection": (HELLO + frame(WINDOW_UPDATE, 0, 0, bytes(4)), PROTOCOL_ERROR),
    "CONTINUATION without HEADERS": (HELLO + frame(CONTINUATION, END_HEADERS, 1, BLOCK), PROTOCOL_ERROR),
    "header block interrupted by a PING": (HELLO + frame(HEADERS, 0, 1, BLOCK[:5]) + frame(PING, 0, 0, bytes(8)),
                                           PROTOCOL_ERROR),
    "PUSH_PROMISE from the client": (HELLO + frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + BLOCK),
                                     PROTOCOL_ERROR),
    "garbage HPACK block": (HELLO + frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xbf\xff\xff\xff"),
                            COMPRESSION_ERROR),
    "HPACK bomb past the header list limit": (HELLO + frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack_bomb()),
                                              COMPRESSION_ERROR),
    "preface not followed by SETTINGS": (PREFACE + frame(PING, 0, 0, bytes(8)), PROTOCOL_ERROR),
}


@pytest.mark.parametrize("sent, code", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
def test_a_protocol_error_ends_the_connection_with_goaway(server, sent, code):
    with connect(server.grpc_port) as sock:
        sock.sendall(sent)
        frames = list(raw_frames(sock))  # to the end: the server closes the connection
    assert goaway(frames) == (0, code), frames[-1][3][8:]


def test_an_endless_header_block_is_cut_off_at_the_advertised_limit(server):
    with connect(server.grpc_port) as sock:
        sock.sendall(HELLO)
        frames = raw_frames(sock)
        limit = server_settings(frames)[MAX_HEADER_LIST_SIZE]
        sizes = [16_384] * (limit // 16_384) + [limit % 16_384 + 1]  # one byte past the limit in all
        sock.sendall(frame(HEADERS, 0, 1, BLOCK + bytes(sizes[0] - len(BLOCK)))
                     + b"".join(frame(CONTINUATION, 0, 1, bytes(n)) for n in sizes[1:]))
        assert goaway(list(frames)) == (0, COMPRESSION_ERROR)


STREAM_ERRORS = {  # case -> (the client's half ended first, the frame then sent on the stream, RST_STREAM code)
    "WINDOW_UPDATE of 0 on a stream": (False, lambda sid: frame(WINDOW_UPDATE, 0, sid, bytes(4)), PROTOCOL_ERROR),
    "stream window past 2^31-1": (False, lambda sid: frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 2 ** 31 - 1)),
                                  FLOW_CONTROL_ERROR),
    "DATA after END_STREAM": (True, lambda sid: frame(DATA, 0, sid, b"x"), STREAM_CLOSED),
}


@pytest.mark.parametrize("case", list(STREAM_ERRORS))
def test_a_stream_error_resets_only_that_stream(server, expected, case):
    ended, bad_frame, code = STREAM_ERRORS[case]
    client = Client(server.grpc_port)
    sid = client.send(grpc_message(SLOW) if ended else grpc_message(GOOD)[:10], end=ended)
    client.sock.sendall(bad_frame(sid))
    assert client.read(sid).reset == code
    assert_answer(client.read(client.send(grpc_message(GOOD))), expected)
    assert client.terminated is None


def test_streams_beyond_the_advertised_limit_are_refused(server, expected):
    extra = 3
    with connect(server.grpc_port) as sock:
        sock.sendall(HELLO)
        frames = raw_frames(sock)
        limit = server_settings(frames)[MAX_CONCURRENT_STREAMS]
        encoder = hpack.Encoder()
        sids = range(1, 2 * (limit + extra), 2)  # HEADERS without END_STREAM: each stream stays open
        sock.sendall(b"".join(frame(HEADERS, END_HEADERS, sid, encoder.encode(request_headers())) for sid in sids))
        resets = []
        for kind, _, sid, payload in frames:
            resets += [(sid, int.from_bytes(payload, "big"))] if kind == RST_STREAM else []
            if len(resets) == extra:
                break
        assert resets == [(sid, REFUSED_STREAM) for sid in sids[-extra:]]
        # a stream the client resets frees its place: the next call is taken and answered
        new = sids[-1] + 2
        sock.sendall(frame(RST_STREAM, 0, sids[0], struct.pack(">I", CANCEL))
                     + frame(HEADERS, END_HEADERS, new, encoder.encode(request_headers()))
                     + frame(DATA, END_STREAM, new, grpc_message(GOOD)))
        reply, decoder = Reply(), hpack.Decoder()
        for kind, flags, sid, payload in frames:
            assert sid in (0, new), (kind, sid)
            if kind == HEADERS:
                headers = dict(decoder.decode(payload, raw=True))
                reply.trailers, reply.headers = (headers, reply.headers) if reply.headers else ({}, headers)
            elif kind == DATA:
                reply.data += payload
            if sid == new and flags & END_STREAM and kind in (DATA, HEADERS):
                reply.ended = True
                break
    assert_answer(reply, expected)


def test_a_connection_without_a_call_is_closed_after_the_header_timeout(server):
    started = time.monotonic()
    with connect(server.grpc_port) as silent, connect(server.grpc_port) as greeted:
        greeted.sendall(HELLO + frame(PING, 0, 0, bytes(8)))  # a preface and a PING are no call
        for sock in (silent, greeted):
            assert goaway(list(raw_frames(sock))) == (0, NO_ERROR)
            assert HEADER_TIMEOUT * 0.9 <= time.monotonic() - started < HEADER_TIMEOUT + 5


NEVER_INDEXED = b"\x10\x09x-trailer\x01y"  # one HPACK literal that leaves both tables as they are


def test_headers_on_a_half_closed_stream_get_stream_closed(server):
    client = Client(server.grpc_port)
    sid = client.send(grpc_message(SLOW))  # complete: its half is closed while the model runs it
    client.sock.sendall(frame(HEADERS, END_HEADERS | END_STREAM, sid, NEVER_INDEXED))
    reply = client.read(sid)
    assert reply.reset == STREAM_CLOSED, reply


def server_memory_mb(server) -> float:
    with open(f"/proc/{server.proc.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads the server's RSS in /proc")
def test_a_stream_reader_that_never_opens_its_window_cannot_grow_the_server(server):
    """1,500 small ModelStreamInfer requests (600 KB, inside the server's stream window) with 256 KB answers each, from
    a client whose INITIAL_WINDOW_SIZE is 0: the server may hold a bounded backlog, not all 384 MB of answers."""
    limit_mb, request = 128, grpc_message(infer_request("wide", np.ones((32, 4), np.float32)))
    with Client(server.grpc_port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        sid = client.send(b"", request_headers("ModelStreamInfer"), end=False)
        client.pump(lambda: client.h2.local_flow_control_window(sid) >= 1500 * len(request))  # the server's SETTINGS
        before = server_memory_mb(server)
        client.send_data(sid, request * 1500, end=False)
        growth, end = 0.0, time.monotonic() + 3
        while growth < limit_mb and time.monotonic() < end:
            time.sleep(0.2)
            growth = server_memory_mb(server) - before
    assert growth < limit_mb, f"the server grew by {growth:.0f} MB for 600 KB of requests"


def test_a_rapid_reset_flood_gets_enhance_your_calm(server):
    """Streams opened and reset at once, far more than the server got to answer ("rapid reset",
    CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM."""
    encoder = hpack.Encoder()
    flood = b"".join(frame(HEADERS, END_HEADERS, sid, encoder.encode(request_headers()))
                     + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)) for sid in range(1, 2 * 1200, 2))
    with connect(server.grpc_port) as sock:
        sock.sendall(HELLO + flood)
        frames = list(raw_frames(sock))
    assert goaway(frames)[1] == 0xB


def test_a_burst_of_stream_requests_within_the_window_is_all_answered(server, expected):
    """1,500 ModelStreamInfer requests sent at once (0.8 MB, inside the 1 MiB stream window the server grants):
    all answered; the server's backlog limit only stops a client that sends past its windows."""
    client = Client(server.grpc_port)
    body = grpc_message(GOOD) * 1500
    assert 0.5 * 2 ** 20 < len(body) < 2 ** 20
    sid = client.send(b"", request_headers("ModelStreamInfer"), end=False)
    client.pump(lambda: client.h2.local_flow_control_window(sid) >= len(body))  # the server's window updates
    client.send_data(sid, body, end=True)
    reply = client.read(sid)
    assert (reply.grpc_status, reply.reset) == (OK, None), reply
    responses = [service_pb2.ModelStreamInferResponse.FromString(m) for m in reply.messages()]
    assert len(responses) == 1500 and not any(r.error_message for r in responses)
    np.testing.assert_allclose(output(responses[-1].infer_response), expected, rtol=1e-5, atol=1e-5)
