"""Run the app: load and warm up every model first, bind the socket, report ready, then serve until
SIGTERM/SIGINT (uvloop when installed); reload on SIGHUP.

``Server`` composes a ``uvicorn.Server`` (it does not subclass it) and drives it through its public surface: the
listening socket is bound here and handed to ``uvicorn.Server.serve(sockets=...)``; SIGINT/SIGTERM go to uvicorn's
own ``handle_exit`` (the first drains in-flight requests for up to ``--drain-timeout``, a second SIGINT forces),
and a watcher that follows ``should_exit`` - as uvicorn's own main loop does - marks the app draining, says so,
and stops the gRPC endpoint alongside. The models are closed once both front ends are done. Each HTTP connection is
edgedl's own HTTP/1.1 protocol (http1.py: httptools parses, the app answers without ASGI; timeouts, header size,
a cap on open connections), which uvicorn's Server drives through its protocol interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from time import perf_counter
from typing import Callable

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.app import InferenceApp
from edgedl.runtime.server.config import ServerConfig
from edgedl.runtime.server.connections import FD_RESERVE, ConnectionGuard, raise_fd_limit
from edgedl.runtime.server.http1 import protocol_class
from edgedl.runtime.server.metrics import ServerMetrics
from edgedl.runtime.server.models import Registry
from edgedl.runtime.server.settings import LogSettings

log = logging.getLogger("edgedl.serve")
WATCH_S = 0.05  # how often the watcher looks at uvicorn's should_exit (uvicorn's own main loop: every 0.1 s)


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise EdgeDLError("the server needs uvicorn; install it with: pip install 'edgedl[serve]'") from None
    return uvicorn


def build(config: ServerConfig) -> InferenceApp:
    """Load and warm up every model (raising EdgeDLError on any problem) and return the ASGI app."""
    metrics = ServerMetrics()
    logs = LogSettings()  # before loading: what loading says goes to the server's log
    try:
        registry = Registry(config, metrics)
        registry.load_all()
    except BaseException:
        logs.close()
        raise
    return InferenceApp(registry, config, metrics, logs)


def serve(config: ServerConfig, on_ready: Callable[[InferenceApp, str], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; ``on_ready(app, url)`` runs once the socket listens and models are warm."""
    uvicorn = _uvicorn()
    t0 = perf_counter()
    grpc_server = _grpc_server() if config.grpc_port is not None else None  # a missing extra fails before loading
    app = build(config)
    limits = config.limits
    guard = ConnectionGuard(limits, raise_fd_limit(limits.max_connections + FD_RESERVE), app.metrics)
    if guard.max_connections < limits.max_connections:
        print(f"edgedl serve: WARNING the open-file limit allows {guard.max_connections} connections, not "
              f"{limits.max_connections}; raise it (ulimit -n, or LimitNOFILE= in a systemd unit) to at least "
              f"{limits.max_connections + FD_RESERVE}", file=sys.stderr, flush=True)
    # uvicorn's own log stays at errors: a client that sends garbage must not be able to fill the log
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, lifespan="off", access_log=False, log_level="error",
        http=protocol_class(app, guard), timeout_graceful_shutdown=config.drain_timeout_s, server_header=False,
        date_header=False, proxy_headers=False,
    )
    Server(app, uvicorn.Server(uv_config), grpc_server, on_ready, t0).run()


def _grpc_server():
    try:
        from edgedl.runtime.server.grpc_server import GrpcServer
    except ImportError:
        raise EdgeDLError("the gRPC endpoint needs hpack and protobuf; install them with: "
                          "pip install 'edgedl[grpc]'") from None
    return GrpcServer


class Server:
    """One ``edgedl serve`` process: the app, its HTTP server (a ``uvicorn.Server``), its optional gRPC server,
    and the signals that reload, drain and stop them."""

    def __init__(self, app: InferenceApp, http, grpc_server=None, on_ready=None, t0: float | None = None):
        self.app, self.http = app, http
        self.grpc = grpc_server(app) if grpc_server is not None else None
        self.on_ready = on_ready
        self.t0 = perf_counter() if t0 is None else t0
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        with self._signals():
            _run(self.serve())

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM -> uvicorn's handle_exit (also while uvicorn is not serving yet: it then stops at once;
        uvicorn re-raises the signal it stopped on into this handler, so the process exits 0), SIGHUP -> reload."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {signal.SIGINT: self.http.handle_exit, signal.SIGTERM: self.http.handle_exit,
                    signal.SIGHUP: self._reload}
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _reload(self, sig, frame) -> None:
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: loop.create_task(_reload_all(self.app)))

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        app, config = self.app, self.app.config
        sock = _listen(config.host, config.port, self.http.config.backlog)
        try:
            grpc_port = await self.grpc.start(config.host, config.grpc_port) if self.grpc is not None else None
        except BaseException:
            sock.close()
            raise
        app.started = True
        self._announce(sock, grpc_port)
        watcher = self.loop.create_task(self._stop_with_http())
        poller = self.loop.create_task(app.registry.poll(config.poll_interval_s)) \
            if config.model_control == "poll" else None
        try:
            await self.http.serve(sockets=[sock])
        finally:
            self.http.should_exit = True
            if poller is not None:
                poller.cancel()
            await watcher
            await app.close()

    async def _stop_with_http(self) -> None:
        """Once uvicorn is told to stop: stop reporting ready, and drain gRPC while HTTP drains."""
        while not self.http.should_exit:
            await asyncio.sleep(WATCH_S)
        if not self.app.draining:
            self.app.draining = True
            print("edgedl serve: draining in-flight requests, then stopping (Ctrl-C again to force)",
                  file=sys.stderr, flush=True)
        if self.grpc is not None:  # gRPC calls in flight finish before the models are retired
            await self.grpc.stop(self.app.config.drain_timeout_s)

    def _announce(self, sock: socket.socket, grpc_port: int | None) -> None:
        app, config = self.app, self.app.config
        host, port = sock.getsockname()[:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        where = url if grpc_port is None else f"{url} and gRPC {host}:{grpc_port}"
        models = ", ".join(f"{name} v{','.join(e.versions)} ({e.latest.mode})"
                           for name, e in app.registry.models.items())
        if config_host_is_public(config.host) and config.api_key is None:
            print(f"edgedl serve: WARNING listening on {config.host} without an API key: anyone who can "
                  "reach this port can run the models", file=sys.stderr, flush=True)
        age = _process_age_s()
        since = f"{age:.2f} s after process start" if age is not None else f"{perf_counter() - self.t0:.2f} s"
        print(f"edgedl serve: ready in {since} (models loaded and warm) at {where} - {models}",
              file=sys.stderr, flush=True)
        if self.on_ready is not None:
            self.on_ready(app, url)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound and listening before the server reports ready (connections made from then on
    wait in the backlog until uvicorn takes them)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise EdgeDLError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another port, or stop "
                          "the process that holds it") from None
    sock.set_inheritable(True)
    return sock


def _run(main) -> None:
    """``asyncio.run`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        factory = asyncio.new_event_loop
    else:
        factory = uvloop.new_event_loop
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
        return
    loop = factory()  # pragma: no cover - Python 3.10
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere) - startup cost includes imports."""
    import time

    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def config_host_is_public(host: str) -> bool:
    return host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127.")


async def _reload_all(app: InferenceApp) -> None:
    try:
        names = await app.registry.reload()
        print(f"edgedl serve: reloaded {', '.join(names)}", file=sys.stderr, flush=True)
    except EdgeDLError as exc:
        print(f"edgedl serve: reload failed, still serving the previous models: {exc}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - a failed reload must not stop the server
        log.exception("reload failed")
