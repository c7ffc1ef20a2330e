"""edgedl's own HTTP/1.1 protocol (runtime/server/http1.py) over a raw loopback socket: keep-alive and its
timeout, HTTP/1.0 and `Connection: close`, `Expect: 100-continue`, HEAD, a client that half-closes after its
request, bodies split at every byte and in chunks, pipelined requests with bodies, percent-encoded and
absolute-form targets, a response in parts to a client that reads slowly. The values are checked against
onnxruntime run on the same model."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import onnxruntime as ort
import pytest

from serve_helpers import ServerProcess

KEEP_ALIVE, HEADER_TIMEOUT = 1.0, 6.0
ROWS = np.random.default_rng(7).standard_normal((3, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def server(built):
    with ServerProcess(built["gemm_a"], "--keep-alive-timeout", KEEP_ALIVE, "--header-timeout", HEADER_TIMEOUT) as proc:
        yield proc
        assert "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def reference(built):
    session = ort.InferenceSession(str(built["gemm_a"]), providers=["CPUExecutionProvider"])
    return lambda rows: session.run(None, {"pixels": rows})[0]


def _body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "pixels", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()


def _post(body: bytes, target: str = "/v2/models/gemm_a/infer", version: str = "1.1", extra: str = "") -> bytes:
    return (f"POST {target} HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


class Reader:
    """Responses off one socket, in order (content-length framed)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, bytearray()

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        self.buf += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"closed before a response: {self.buf[:200]!r}"
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        n = 0 if head_only else int(headers.get("content-length", 0))
        while len(self.buf) < n:
            assert self._fill(), "closed mid-body"
        body, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return int(lines[0].split()[1]), headers, body

    def closed_within(self, seconds: float) -> bytes:
        """What is left until the server closes (which must happen within ``seconds``)."""
        self.sock.settimeout(seconds)
        while self._fill():
            pass
        return bytes(self.buf)


def _values(body: bytes) -> np.ndarray:
    out = json.loads(body)["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_keep_alive_serves_many_requests_then_closes_an_idle_connection(server, reference):
    with _connect(server.port) as sock:
        reader = Reader(sock)
        for i in range(3):
            sock.sendall(_post(_body(ROWS[i:i + 1])))
            status, headers, body = reader.response()
            assert status == 200 and "connection" not in headers
            np.testing.assert_allclose(_values(body), reference(ROWS[i:i + 1]), rtol=1e-5, atol=1e-5)
        t0 = time.monotonic()
        assert reader.closed_within(HEADER_TIMEOUT) == b""  # closed by the keep-alive timeout, silently
        assert time.monotonic() - t0 < HEADER_TIMEOUT - 1


@pytest.mark.parametrize("version, extra", [("1.0", ""), ("1.1", "Connection: close\r\n")])
def test_http_1_0_and_connection_close_get_one_answer_and_a_close(server, reference, version, extra):
    with _connect(server.port) as sock:
        sock.sendall(_post(_body(ROWS), version=version, extra=extra) + _post(_body(ROWS)))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert status == 200 and headers["connection"] == "close"
        np.testing.assert_allclose(_values(body), reference(ROWS), rtol=1e-5, atol=1e-5)
        assert reader.closed_within(5) == b""  # the request after it is not answered


def test_expect_100_continue(server, reference):
    body = _body(ROWS)
    with _connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(_post(b"", extra="Expect: 100-continue\r\n").replace(b"Content-Length: 0",
                                                                         f"Content-Length: {len(body)}".encode()))
        status, _, _ = reader.response(head_only=True)
        assert status == 100  # asked for the body before it was sent
        sock.sendall(body)
        status, _, answer = reader.response()
        assert status == 200
        np.testing.assert_allclose(_values(answer), reference(ROWS), rtol=1e-5, atol=1e-5)
        # a body over the limit is refused without asking for it
        sock.sendall(b"POST /v2/models/gemm_a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, _, answer = reader.response()
        assert status == 413 and "exceeds the limit" in json.loads(answer)["error"]


def test_head_gets_headers_only_and_the_connection_stays_usable(server):
    with _connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD /v2/models/gemm_a HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = reader.response(head_only=True)
        assert status == 405 and int(headers["content-length"]) > 0
        sock.sendall(b"GET /v2/models/gemm_a HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = reader.response()  # the HEAD answer carried no body: this parses cleanly
        assert status == 200 and json.loads(body)["name"] == "gemm_a"


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(server, reference):
    with _connect(server.port) as sock:
        sock.sendall(_post(_body(ROWS[:1])) + _post(_body(ROWS[1:])))
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        first, second = reader.response(), reader.response()
        assert first[0] == second[0] == 200
        np.testing.assert_allclose(_values(first[2]), reference(ROWS[:1]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_values(second[2]), reference(ROWS[1:]), rtol=1e-5, atol=1e-5)
        assert reader.closed_within(5) == b""


def test_a_client_that_half_closes_mid_body_frees_its_place(server):
    with _connect(server.port) as sock:
        sock.sendall(b"POST /v2/models/gemm_a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"in")
        sock.shutdown(socket.SHUT_WR)
        assert Reader(sock).closed_within(3) == b""  # closed at once, not after the body timeout
    with _connect(server.port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = Reader(sock).response()
    in_flight = [line for line in body.decode().splitlines() if line.startswith("edgedl_inference_in_flight{")]
    assert status == 200 and in_flight and all(line.endswith(" 0") for line in in_flight), in_flight


def test_pipelined_requests_split_at_every_byte_and_chunked(server, reference):
    chunked = _body(ROWS[2:])
    stream = (_post(_body(ROWS[:1])) + _post(_body(ROWS[1:2]))
              + b"POST /v2/models/gemm_a/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              + b"".join(b"%x\r\n%s\r\n" % (len(chunked[i:i + 100]), chunked[i:i + 100])
                         for i in range(0, len(chunked), 100)) + b"0\r\n\r\n"
              + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    with _connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(stream), 97):  # odd-sized pieces: boundaries fall inside lines, headers, chunks
            sock.sendall(stream[i:i + 97])
            time.sleep(0.001)
        reader = Reader(sock)
        answers = [reader.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    for (_, _, body), rows in zip(answers, (ROWS[:1], ROWS[1:2], ROWS[2:])):
        np.testing.assert_allclose(_values(body), reference(rows), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target, status", [
    ("/v2/models/gemm%5Fa/infer", 200),  # percent-encoded, as some clients send
    ("http://127.0.0.1/v2/models/gemm_a/infer", 200),  # absolute form (what a proxy sends)
    ("/v2/models/gemm_a/infer?x=1", 200),  # a query is ignored
    ("/v2/models/g\xe9mm/infer", 400),  # not ASCII: the parser refuses it
])
def test_request_targets(server, target, status):
    with _connect(server.port) as sock:
        sock.sendall(_post(_body(ROWS)).replace(b"/v2/models/gemm_a/infer", target.encode("latin-1"), 1))
        got, _, body = Reader(sock).response()
    assert got == status, body
    if status == 400:
        assert json.loads(body)["error"] == "invalid HTTP request: Invalid char in url path; the connection is closed"


def test_a_response_in_parts_reaches_a_slow_reader_whole_while_others_are_served(server, reference):
    rows = np.random.default_rng(3).standard_normal((30_000, 64)).astype(np.float32)
    with _connect(server.port) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the server's writes back up
        slow.sendall(_post(_body(rows)))
        time.sleep(1.0)  # the answer (megabytes of JSON) waits in the server for this reader
        with _connect(server.port) as other:
            other.sendall(_post(_body(ROWS)))
            status, _, body = Reader(other).response()
            assert status == 200
            np.testing.assert_allclose(_values(body), reference(ROWS), rtol=1e-5, atol=1e-5)
        status, headers, body = Reader(slow).response()
    assert status == 200 and int(headers["content-length"]) > 1_000_000
    np.testing.assert_allclose(_values(body), reference(rows), rtol=1e-4, atol=1e-4)
