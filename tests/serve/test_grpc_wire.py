"""`edgedl serve --grpc-port`'s HTTP/2 layer on the wire: a raw HTTP/2 client (frames by hand, HPACK by the
hpack library) over loopback sends good calls in the shapes real clients may use (split frames, padding,
CONTINUATION, compression, streams) and bad ones (protocol errors, oversized and bogus messages, floods); every
bad one gets the RFC 9113 / gRPC answer, and the server keeps serving afterwards."""

from __future__ import annotations

import gzip
import socket
import struct
import time
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from hpack import Decoder, Encoder
from tritonclient.grpc import service_pb2 as pb

from serve_helpers import ServerProcess, free_port, gemm_model, slow_model

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 5, 6, 7, 8, 9
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
LIMIT = 65_536  # the servers' --max-body-bytes: the gRPC message limit
KEY = "wire-key"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def message(payload: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(payload)) + payload


def frame_list(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each whole frame in ``data``."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[9:9 + length]))
        data = data[9 + length:]
    return out


def messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        length = struct.unpack(">I", data[1:5])[0]
        out.append(data[5:5 + length])
        data = data[5 + length:]
    return out


class Result:
    def __init__(self):
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.data = b""
        self.reset: int | None = None
        self.goaway: int | None = None
        self.closed = False

    @property
    def status(self) -> int | None:
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)


class Wire:
    """One HTTP/2 connection, written frame by frame."""

    def __init__(self, port: int, settings: bytes = b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder, self.decoder, self.buf = Encoder(), Decoder(), b""
        self.window_updates = []
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def close(self):
        self.sock.close()

    def send(self, *frames: bytes):
        self.sock.sendall(b"".join(frames))

    def block(self, path: str = INFER, *extra: tuple[str, str], method: str = "POST",
              content_type: str = "application/grpc") -> bytes:
        return self.encoder.encode([(":method", method), (":scheme", "http"), (":path", path),
                                    (":authority", "127.0.0.1"), ("content-type", content_type), ("te", "trailers"),
                                    *extra])

    def call(self, sid: int, body: bytes, path: str = INFER, *extra, seconds: float = 10.0) -> Result:
        """One call: its headers, then ``body`` in DATA frames of at most 16 KiB (the last ends the stream)."""
        chunks = [body[i:i + 16_384] for i in range(0, len(body), 16_384)] or [b""]
        self.send(frame(HEADERS, END_HEADERS, sid, self.block(path, *extra)),
                  *(frame(DATA, END_STREAM if i == len(chunks) - 1 else 0, sid, c) for i, c in enumerate(chunks)))
        return self.read(sid, seconds=seconds)

    def frames(self, seconds: float = 10.0):
        """Frames from the server until it closes the connection or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                kind, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                payload, self.buf = self.buf[9:9 + length], self.buf[9 + length:]
                yield kind, flags, sid, payload
            try:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                return
            self.buf += chunk

    def read(self, sid: int, result: Result | None = None, seconds: float = 10.0) -> Result:
        """What the server sends on stream ``sid`` until it ends (or the connection does)."""
        result = result or Result()
        for kind, flags, stream, payload in self.frames(seconds):
            if kind == GOAWAY:
                result.goaway = int.from_bytes(payload[4:8], "big")
                continue
            if kind == WINDOW_UPDATE:
                self.window_updates.append((stream, int.from_bytes(payload, "big")))
            if stream != sid:
                continue
            if kind == HEADERS:
                headers = {k.decode(): v.decode() for k, v in self.decoder.decode(payload, raw=True)}
                (result.trailers if result.headers else result.headers).update(headers)
                if not result.headers:
                    result.headers = headers
            elif kind == DATA:
                result.data += payload
            elif kind == RST_STREAM:
                result.reset = int.from_bytes(payload, "big")
                return result
            if flags & END_STREAM:
                return result
        result.closed = True
        return result

    def goaway(self, seconds: float = 10.0) -> int | None:
        """The error code of the GOAWAY the server sends before it closes the connection."""
        code = None
        for kind, _, _, payload in self.frames(seconds):
            if kind == GOAWAY:
                code = int.from_bytes(payload[4:8], "big")
        return code


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("wire")
    return {"gemm": gemm_model(d / "gemm.onnx", seed=3), "slow": slow_model(d / "slow.onnx")}


def _serve(model, *extra) -> ServerProcess:
    port = free_port()
    server = ServerProcess(model, "--grpc-port", str(port), *extra)
    server.grpc_port = port
    return server


@pytest.fixture(scope="module")
def server(models):
    with _serve(models["gemm"], "--max-body-bytes", str(LIMIT), "--header-timeout", "2") as s:
        yield s


X = np.random.default_rng(0).random((2, 64), dtype=np.float32)


def infer_request(x: np.ndarray = X, model: str = "gemm") -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=list(x.shape))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]).SerializeToString()


def expected(models, x: np.ndarray = X) -> np.ndarray:
    return ort.InferenceSession(str(models["gemm"]), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]


def logits(result: Result) -> np.ndarray:
    (reply,) = messages(result.data)
    response = pb.ModelInferResponse.FromString(reply)
    assert [o.name for o in response.outputs] == ["logits"]
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))


def still_serves(server, models):
    wire = Wire(server.grpc_port)
    try:
        result = wire.call(1, message(infer_request()))
        assert result.status == 0, result.trailers
        np.testing.assert_allclose(logits(result), expected(models), rtol=1e-5, atol=1e-6)
    finally:
        wire.close()


def test_a_call_by_hand(server, models):
    wire = Wire(server.grpc_port)
    result = wire.call(1, message(infer_request()))
    assert result.headers[":status"] == "200" and result.headers["content-type"] == "application/grpc"
    assert result.status == 0
    np.testing.assert_allclose(logits(result), expected(models), rtol=1e-5, atol=1e-6)
    # a second call on the same connection; PING is answered with its own payload
    wire.send(frame(PING, 0, 0, b"12345678"))
    assert wire.call(3, message(infer_request())).status == 0
    wire.send(frame(PING, 0, 0, b"abcdefgh"))
    acks = [p for kind, flags, _, p in wire.frames(0.5) if kind == PING and flags & 1]
    assert acks == [b"abcdefgh"]
    wire.close()


def test_split_padded_and_continued_frames(server, models):
    wire = Wire(server.grpc_port)
    body = message(infer_request())
    block = wire.block()
    # headers in HEADERS + two CONTINUATIONs, the message in 7-byte DATA frames, some padded
    wire.send(frame(HEADERS, 0, 1, block[:5]), frame(CONTINUATION, 0, 1, block[5:9]),
              frame(CONTINUATION, END_HEADERS, 1, block[9:]))
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    for i, piece in enumerate(pieces):
        last = END_STREAM if i == len(pieces) - 1 else 0
        if i % 2:
            wire.send(frame(DATA, last | PADDED, 1, bytes([3]) + piece + b"\0\0\0"))
        else:
            wire.send(frame(DATA, last, 1, piece))
    result = wire.read(1)
    assert result.status == 0
    np.testing.assert_allclose(logits(result), expected(models), rtol=1e-5, atol=1e-6)
    wire.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_requests(server, models, encoding):
    raw = infer_request()
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    wire = Wire(server.grpc_port)
    result = wire.call(1, message(packed, compressed=1), INFER, ("grpc-encoding", encoding))
    assert result.status == 0, result.trailers
    np.testing.assert_allclose(logits(result), expected(models), rtol=1e-5, atol=1e-6)
    wire.close()


BOMB = gzip.compress(b"\0" * (4 * LIMIT))
BAD_CALLS = {  # case -> (path, message bytes, extra headers, gRPC status, part of grpc-message)
    "unknown method": ("/inference.GRPCInferenceService/Nope", message(b""), (), 12, "Method not found"),
    "unknown encoding": (INFER, message(b"x", 1), (("grpc-encoding", "snappy"),), 12, "snappy"),
    "compressed without encoding": (INFER, message(b"x", 1), (), 13, "compressed"),
    "not gzip": (INFER, message(b"not gzip", 1), (("grpc-encoding", "gzip"),), 13, "gzip"),
    "gzip bomb": (INFER, message(BOMB, 1), (("grpc-encoding", "gzip"),), 8, "decompressed"),
    "message over the limit": (INFER, struct.pack(">BI", 0, LIMIT + 1) + b"\0" * 100, (), 8, "larger than max"),
    "no message": (INFER, b"", (), 13, "exactly one request message"),
    "two messages": (INFER, message(infer_request()) * 2, (), 13, "exactly one request message"),
    "truncated message": (INFER, message(infer_request())[:-3], (), 13, "exactly one request message"),
    "not protobuf": (INFER, message(b"\xff\xff\xff\xff"), (), 3, "not a valid protobuf"),
    "unknown model": (INFER, message(infer_request(model="nope")), (), 5, "unknown model"),
    "wrong shape": (INFER, message(infer_request(np.zeros((2, 8), np.float32))), (), 3, "size 64 on axis 1"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_calls_get_a_grpc_status(server, models, case):
    path, body, extra, code, fragment = BAD_CALLS[case]
    wire = Wire(server.grpc_port)
    result = wire.call(1, body, path, *extra)
    assert result.headers.get(":status") == "200" and result.status == code, (result.headers, result.trailers)
    text = result.trailers.get("grpc-message", result.headers.get("grpc-message", ""))
    assert fragment in text.replace("%20", " ").replace("%27", "'"), text
    wire.close()
    still_serves(server, models)


@pytest.mark.parametrize("method, content_type, status", [("GET", "application/grpc", "405"),
                                                          ("POST", "application/json", "415")])
def test_not_grpc_requests_get_an_http_status(server, method, content_type, status):
    wire = Wire(server.grpc_port)
    wire.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, wire.block(INFER, method=method, content_type=content_type)))
    assert wire.read(1).headers[":status"] == status
    wire.close()


PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x1, 0x3, 0x6, 0x9
BROKEN = {  # case -> (frames after the preface, GOAWAY code)
    "frame over 16384 bytes": (frame(PING, 0, 0, b"\0" * 16_385), FRAME_SIZE_ERROR),
    "DATA on stream 0": (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    "HEADERS on an even stream": (frame(HEADERS, END_HEADERS, 2, b"\x82"), PROTOCOL_ERROR),
    "PING of 7 bytes": (frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    "MAX_FRAME_SIZE too small": (frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 100)), PROTOCOL_ERROR),
    "INITIAL_WINDOW_SIZE too large": (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2 ** 31)), FLOW_CONTROL_ERROR),
    "SETTINGS of 5 bytes": (frame(SETTINGS, 0, 0, b"\0" * 5), FRAME_SIZE_ERROR),
    "WINDOW_UPDATE of 0": (frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
    "window overflow": (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2 ** 31 - 1)), FLOW_CONTROL_ERROR),
    "CONTINUATION without HEADERS": (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
    "interrupted header block": (frame(HEADERS, 0, 1, b"\x83") + frame(PING, 0, 0, b"\0" * 8), PROTOCOL_ERROR),
    "PUSH_PROMISE from a client": (frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2"), PROTOCOL_ERROR),
    "garbage HPACK": (frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff"), COMPRESSION_ERROR),
    "padding longer than the frame": (frame(HEADERS, END_HEADERS | PADDED, 1, b"\x09\x82"), PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_protocol_errors_end_the_connection_with_goaway(server, models, case):
    frames, code = BROKEN[case]
    wire = Wire(server.grpc_port)
    wire.send(frames)
    assert wire.goaway() == code
    wire.close()
    still_serves(server, models)


def test_not_http2_at_all(server, models):
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert [kind for kind, _ in frame_list(data)][-1] == GOAWAY and data.count(b"prior knowledge") == 1
    still_serves(server, models)


def test_flow_control_a_small_window_gets_the_whole_response(server, models):
    """The client grants 16 bytes per stream: the server sends no more than granted, and the rest once the
    client opens the window."""
    x = np.random.default_rng(1).random((60, 64), dtype=np.float32)  # 2,400 bytes of logits
    wire = Wire(server.grpc_port, settings=struct.pack(">HI", 4, 16))
    result = wire.call(1, message(infer_request(x)), seconds=1.0)
    assert len(result.data) == 16 and result.closed is True  # 16 bytes, then the server waits (read timed out)
    granted = 16
    for _ in range(100):
        wire.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 512)))
        granted += 512
        result = wire.read(1, result, seconds=0.5)
        assert len(result.data) <= granted
        if result.trailers:
            break
    assert result.status == 0
    np.testing.assert_allclose(logits(result), expected(models, x), rtol=1e-5, atol=1e-6)
    wire.close()


def test_reset_streams_and_a_reset_flood(server, models):
    wire = Wire(server.grpc_port)
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()), frame(RST_STREAM, 0, 1, b"\0\0\0\x08"))
    assert wire.call(3, message(infer_request())).status == 0  # the same connection goes on
    # "rapid reset": streams opened and reset at once, many more than were answered -> ENHANCE_YOUR_CALM
    flood = b"".join(frame(HEADERS, END_HEADERS, sid, wire.block()) + frame(RST_STREAM, 0, sid, b"\0\0\0\x08")
                     for sid in range(5, 5 + 2 * 1200, 2))
    wire.send(flood)
    assert wire.goaway() == 0xB
    wire.close()
    still_serves(server, models)


def test_streams_beyond_the_limit_are_refused(server, models):
    wire = Wire(server.grpc_port)
    wire.send(b"".join(frame(HEADERS, END_HEADERS, sid, wire.block(STREAM)) for sid in range(1, 2 * 260, 2)))
    resets = {}
    for kind, _, sid, payload in wire.frames(2.0):
        if kind == RST_STREAM:
            resets[sid] = int.from_bytes(payload, "big")
    assert sorted(resets) == list(range(2 * 256 + 1, 2 * 260, 2)) and set(resets.values()) == {0x7}  # REFUSED_STREAM
    wire.close()
    still_serves(server, models)


def test_a_silent_connection_is_closed_after_the_header_timeout(server):
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        started, data = time.monotonic(), b""
        while chunk := sock.recv(4096):
            data += chunk
        assert 1.5 < time.monotonic() - started < 8  # --header-timeout 2
    assert [kind for kind, _ in frame_list(data)] == [SETTINGS, WINDOW_UPDATE, GOAWAY]


def test_streaming_call(server, models):
    """Three requests in one DATA frame and a fourth split over two: four responses, then status 0."""
    wire = Wire(server.grpc_port)
    xs = [np.random.default_rng(i).random((1, 64), dtype=np.float32) for i in range(4)]
    body = [message(infer_request(x)) for x in xs]
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block(STREAM)), frame(DATA, 0, 1, b"".join(body[:3])),
              frame(DATA, 0, 1, body[3][:9]), frame(DATA, END_STREAM, 1, body[3][9:]))
    result = wire.read(1)
    assert result.status == 0
    replies = [pb.ModelStreamInferResponse.FromString(m) for m in messages(result.data)]
    assert len(replies) == 4 and not any(r.error_message for r in replies)
    got = sorted(np.frombuffer(r.infer_response.raw_output_contents[0], np.float32).tobytes() for r in replies)
    assert got == sorted(expected(models, x).tobytes() for x in xs)
    wire.close()


def _slow_request(rows: int) -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 512])
    x = np.zeros((rows, 512), np.float32)
    return pb.ModelInferRequest(model_name="slow", inputs=[tensor], raw_input_contents=[x.tobytes()]).SerializeToString()


def test_deadline_exceeded(models):
    """grpc-timeout 5 ms on a run of ~0.3 s: DEADLINE_EXCEEDED in time; the server then serves the next call."""
    with _serve(models["slow"], "--threads", "1") as s:
        wire = Wire(s.grpc_port)
        started = time.monotonic()
        result = wire.call(1, message(_slow_request(100)), INFER, ("grpc-timeout", "5m"))
        assert result.status == 4 and time.monotonic() - started < 2, result.trailers  # DEADLINE_EXCEEDED
        assert wire.call(3, message(_slow_request(1))).status == 0  # no deadline: it runs
        wire.close()
        assert s.proc.poll() is None


def test_api_key(models):
    with _serve(models["gemm"], "--api-key", KEY) as s:
        wire = Wire(s.grpc_port)
        assert wire.call(1, message(infer_request())).status == 16  # UNAUTHENTICATED
        assert wire.call(3, message(infer_request()), INFER, ("authorization", "Bearer nope")).status == 16
        assert wire.call(5, message(b""), "/inference.GRPCInferenceService/ServerLive").status == 0
        assert wire.call(7, message(infer_request()), INFER, ("authorization", f"Bearer {KEY}")).status == 0
        wire.close()


def test_a_burst_of_stream_messages_within_the_window(server):
    """2,000 requests sent at once on one stream (about 0.6 MB, inside the 1 MiB stream window) are all
    answered: the backlog limit only stops a client that sends past its window. (The client opens its own
    windows for the 2,000 answers: 65,535 bytes would hold about half of them.)"""
    wire = Wire(server.grpc_port, settings=struct.pack(">HI", 4, 1 << 24))
    wire.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24)))
    body = message(infer_request(X[:1])) * 2000
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block(STREAM)),
              *(frame(DATA, 0, 1, body[i:i + 16_384]) for i in range(0, len(body), 16_384)), frame(DATA, END_STREAM, 1))
    result = wire.read(1, seconds=60)
    assert result.status == 0 and result.reset is None
    replies = [pb.ModelStreamInferResponse.FromString(m) for m in messages(result.data)]
    assert len(replies) == 2000 and not any(r.error_message for r in replies)
    wire.close()
