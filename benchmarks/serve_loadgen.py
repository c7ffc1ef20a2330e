"""A minimal HTTP/1.1 keep-alive load generator for the serving benchmarks: requests are pre-encoded bytes,
responses are checked for status 200, so the client costs little next to the server it measures."""

from __future__ import annotations

import asyncio
import socket
import time


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
             "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")


class SyncClient:
    """One blocking keep-alive connection: ``roundtrip(request) -> (status, body)``."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        buf = self.buf
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        n = _content_length(head)
        while len(rest) < n:
            chunk = self.sock.recv(max(1 << 16, n - len(rest)))
            if not chunk:
                raise ConnectionError("server closed the connection")
            rest += chunk
        self.buf = rest[n:]
        return int(head[9:12]), rest[:n]

    def close(self) -> None:
        self.sock.close()


async def _client(host, port, request, stop_at, warm_until, counts, latencies):
    reader, writer = await asyncio.open_connection(host, port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter
    try:
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(_content_length(head))
            t1 = clock()
            status = int(head[9:12])
            counts[2] += 1
            if t0 >= warm_until:
                if status == 200:
                    counts[0] += 1
                    latencies.append(t1 - t0)
                else:
                    counts[1] += 1
                    if counts[1] == 1:
                        print(f"  non-200 response {status}: {body[:200]!r}", flush=True)
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(host: str, port: int, request: bytes, clients: int, seconds: float = 3.0, warmup_s: float = 0.5,
               server_pid: int | None = None) -> dict:
    """``clients`` concurrent keep-alive connections sending ``request`` back to back for ``seconds``.

    With ``server_pid``, also requests per second of server CPU time: on a shared machine the raw rate depends
    on what else runs on the server's CPU, the rate per CPU-second much less."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    counts, latencies = [0, 0, 0], []
    cpu0 = cpu_seconds(server_pid) if server_pid else None

    async def main():
        now = time.perf_counter()
        warm_until = now + warmup_s
        stop_at = warm_until + seconds
        await asyncio.gather(*(_client(host, port, request, stop_at, warm_until, counts, latencies)
                               for _ in range(clients)))

    runner(main())
    cpu = cpu_seconds(server_pid) - cpu0 if server_pid else None
    latencies.sort()
    pick = lambda q: latencies[min(int(q * len(latencies)), len(latencies) - 1)] * 1e3 if latencies else float("nan")
    return {"clients": clients, "requests_per_s": counts[0] / seconds, "errors": counts[1], "p50_ms": pick(0.5),
            "p99_ms": pick(0.99), "requests_per_server_cpu_s": counts[2] / cpu if cpu else float("nan")}
