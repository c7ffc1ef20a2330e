"""Run the app under uvicorn (httptools parser, uvloop when installed): load and warm up every model first,
report ready only once the socket is bound, reload on SIGHUP, drain in-flight requests on SIGTERM/SIGINT.
Connections go through ``connections.GuardedProtocol`` (timeouts, header size, a cap on open connections)."""

from __future__ import annotations

import asyncio
import os
import logging
import signal
import sys
import threading
from time import perf_counter
from typing import Callable

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.app import InferenceApp
from edgedl.runtime.server.config import ServerConfig
from edgedl.runtime.server.connections import FD_RESERVE, ConnectionGuard, protocol_class, raise_fd_limit
from edgedl.runtime.server.metrics import ServerMetrics
from edgedl.runtime.server.models import Registry

log = logging.getLogger("edgedl.serve")


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise EdgeDLError("the server needs uvicorn; install it with: pip install 'edgedl[serve]'") from None
    return uvicorn


def _best(module: str, fast: str, fallback: str) -> str:
    import importlib.util

    return fast if importlib.util.find_spec(module) is not None else fallback


def build(config: ServerConfig) -> InferenceApp:
    """Load and warm up every model (raising EdgeDLError on any problem) and return the ASGI app."""
    metrics = ServerMetrics()
    registry = Registry(config, metrics)
    registry.load_all()
    return InferenceApp(registry, config, metrics)


def serve(config: ServerConfig, on_ready: Callable[[InferenceApp, str], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; ``on_ready(app, url)`` runs once the socket is bound and models are warm."""
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
        app, host=config.host, port=config.port, lifespan="on", access_log=False, log_level="error",
        loop=_best("uvloop", "uvloop", "asyncio"), http=protocol_class(guard),
        timeout_graceful_shutdown=config.drain_timeout_s, server_header=False, date_header=False,
        timeout_keep_alive=limits.keep_alive_timeout_s, proxy_headers=False,
    )
    server = _Server(uv_config, app, on_ready, t0, grpc_server)
    server.run()


def _grpc_server():
    try:
        from edgedl.runtime.server.grpc_server import GrpcServer
    except ImportError:
        raise EdgeDLError("the gRPC endpoint needs grpcio and protobuf; install them with: "
                          "pip install 'edgedl[grpc]'") from None
    return GrpcServer


class _Server:
    """uvicorn.Server with edgedl's signals: SIGHUP reloads, SIGTERM/SIGINT drain (a second SIGINT forces),
    and a clean exit status instead of re-raising the signal."""

    def __new__(cls, uv_config, app, on_ready, t0, grpc_server=None):
        uvicorn = _uvicorn()

        class Server(uvicorn.Server):
            def capture_signals(self):
                import contextlib

                @contextlib.contextmanager
                def handlers():
                    if threading.current_thread() is not threading.main_thread():
                        yield
                        return
                    previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload)
                    try:
                        yield
                    finally:
                        for sig, handler in previous.items():
                            signal.signal(sig, handler)

                return handlers()

            def handle_exit(self, sig, frame):
                if not app.draining:
                    # os.write, not print: a signal can arrive while the main thread is inside sys.stderr's
                    # buffered writer, and print would then raise "reentrant call"
                    os.write(2, b"edgedl serve: draining in-flight requests, then stopping (Ctrl-C again to force)\n")
                app.draining = True
                super().handle_exit(sig, frame)

            def _reload(self, sig, frame):
                loop = self._loop
                if loop is not None:
                    loop.call_soon_threadsafe(lambda: loop.create_task(_reload_all(app)))

            async def startup(self, sockets=None):
                self._loop = asyncio.get_running_loop()
                if grpc_server is not None:  # on this loop, which the models' batchers live on too
                    self.grpc = grpc_server(app)
                    grpc_port = await self.grpc.start(app.config.host, app.config.grpc_port)
                await super().startup(sockets)
                if self.should_exit:
                    return
                app.started = True
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                url = f"http://{host}:{port}"
                where = url if self.grpc is None else f"{url} and gRPC {host}:{grpc_port}"
                models = ", ".join(f"{name} v{','.join(e.versions)} ({e.latest.mode})"
                                   for name, e in app.registry.models.items())
                if config_host_is_public(app.config.host) and app.config.api_key is None:
                    print(f"edgedl serve: WARNING listening on {app.config.host} without --api-key: anyone who can "
                          "reach this port can run the models", file=sys.stderr, flush=True)
                age = _process_age_s()
                since = f"{age:.2f} s after process start" if age is not None else f"{perf_counter() - t0:.2f} s"
                print(f"edgedl serve: ready in {since} (models loaded and warm) at {where} - {models}",
                      file=sys.stderr, flush=True)
                if on_ready is not None:
                    on_ready(app, url)

            async def shutdown(self, sockets=None):
                if self.grpc is not None:  # gRPC calls in flight finish before the models are retired
                    await self.grpc.stop(app.config.drain_timeout_s)
                await super().shutdown(sockets)

        server = Server(uv_config)
        server._loop = None
        server.grpc = None
        return server


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere) - startup cost includes imports."""
    import os
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
