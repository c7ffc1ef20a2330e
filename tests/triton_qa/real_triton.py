"""The real Triton Inference Server 2.51, for tests that compare edgedl with it (see /work/shared/TRITON.md).

PyPI's ``tritonserver`` is a placeholder; the ``nvidia-pytriton`` 0.7.0 wheel ships the real server binary with
its Python backend. ``triton_install()`` downloads that wheel once with pip, extracts the server, and makes a
small venv (numpy<2 - the backend stub is built against numpy 1 - and onnxruntime) for the backend's model.py;
all of it is cached under build/triton-2.51 like the zoo. ``TritonServer`` runs it on a repository over
loopback and stops it by its PID. ``perf_analyzer_install()`` does the same for Triton's perf_analyzer binary
(it ships in the tritonclient 2.40 wheel; cached under build/perf-analyzer-2.40).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgedl_testing import ROOT, free_ports

PYTRITON = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"
CACHE = ROOT / "build" / "triton-2.51"
PERF_ANALYZER_WHEEL = "tritonclient==2.40.0"
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"  # perf_analyzer links libcudart even when it never uses a GPU
PA_CACHE = ROOT / "build" / "perf-analyzer-2.40"


@dataclass(frozen=True)
class TritonInstall:
    root: Path  # the extracted wheel: pytriton/tritonserver/{bin,backends,caches} and nvidia_pytriton.libs
    venv: Path  # python for the backend stub (numpy<2, onnxruntime)

    @property
    def server(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    def env(self) -> dict[str, str]:
        # the stub finds its Python through PATH (its sys.path follows that interpreter's venv) and links
        # libpython from the interpreter's LIBDIR; the server finds its own libraries by RPATH
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        return {**os.environ, "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
                "LD_LIBRARY_PATH": f"{self.root / 'nvidia_pytriton.libs'}:{libdir}"}


class TritonUnavailable(Exception):
    """The wheel cannot be downloaded here (no index reachable); the test that needs Triton skips."""


def _pip(*args: str, python: str = sys.executable) -> None:
    result = subprocess.run([python, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise TritonUnavailable(f"pip {' '.join(args[:2])} failed: {result.stderr.strip().splitlines()[-1:]}")


def triton_install() -> TritonInstall:
    """The cached install, made once (under a lock shared by parallel test runs)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    install = TritonInstall(CACHE / "dist", CACHE / "venv")
    done = CACHE / ".complete"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return install
        for stale in (install.root, install.venv, CACHE / "wheel"):
            shutil.rmtree(stale, ignore_errors=True)
        _pip("download", "--no-deps", PYTRITON, "-d", str(CACHE / "wheel"))
        wheel = next((CACHE / "wheel").glob("nvidia_pytriton-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    path = Path(archive.extract(info, install.root))
                    mode = (info.external_attr >> 16) & 0o777
                    if mode:
                        path.chmod(mode)
        shutil.rmtree(CACHE / "wheel")
        stubs = install.server / "python_backend_stubs"
        stub = stubs / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(f"{PYTRITON} has no Python backend stub for Python {sys.version_info[:2]}")
        shutil.copy2(stub, install.server / "backends" / "python" / stub.name)
        shutil.rmtree(stubs)
        subprocess.run([sys.executable, "-m", "venv", str(install.venv)], check=True, capture_output=True)
        ort = _installed_version("onnxruntime")
        _pip("install", "numpy<2", f"onnxruntime=={ort}" if ort else "onnxruntime",
             python=str(install.venv / "bin" / "python"))
        done.write_text(f"{PYTRITON}\n")
    return install


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    libs: Path  # libcudart.so.12

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": f"{self.libs}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def perf_analyzer_install() -> PerfAnalyzer:
    """Triton's perf_analyzer from the tritonclient 2.40 wheel (PyPI's perf-analyzer is a placeholder without it),
    with the CUDA runtime library it links, made once under a lock. It also needs libb64 (Debian: libb64-0d,
    installed by .ci/run)."""
    PA_CACHE.mkdir(parents=True, exist_ok=True)
    tool = PerfAnalyzer(PA_CACHE / "perf_analyzer", PA_CACHE / "cudart" / "nvidia" / "cuda_runtime" / "lib")
    done = PA_CACHE / ".complete"
    with open(PA_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return tool
        for stale in (PA_CACHE / "wheel", PA_CACHE / "cudart"):
            shutil.rmtree(stale, ignore_errors=True)
        _pip("download", "--no-deps", PERF_ANALYZER_WHEEL, "-d", str(PA_CACHE / "wheel"))
        wheel = next((PA_CACHE / "wheel").glob("tritonclient-*.whl"))
        member = f"{wheel.name.split('-py3')[0]}.data/data/bin/perf_analyzer"
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(tool.binary, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tool.binary.chmod(0o755)
        shutil.rmtree(PA_CACHE / "wheel")
        _pip("install", "--no-deps", "--target", str(PA_CACHE / "cudart"), CUDART)
        done.write_text(f"{PERF_ANALYZER_WHEEL}\n{CUDART}\n")
    return tool


def _installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


class TritonServer:
    """``tritonserver`` on ``repository`` over loopback; ``http`` / ``grpc`` are host:port (tritonclient style).

    ``mode`` is Triton's --model-control-mode: 'explicit' loads every model at start (--load-model=*), 'none'
    loads them all and refuses load/unload requests (Triton's default)."""

    def __init__(self, install: TritonInstall, repository: Path, mode: str = "explicit", log: Path | None = None,
                 timeout: float = 180.0):
        http, grpc, metrics = free_ports(3)
        self.http, self.grpc = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        self.log = log or repository.parent / f"{repository.name}.triton.log"
        args = [str(install.server / "bin" / "tritonserver"), f"--model-repository={repository}",
                f"--backend-directory={install.server / 'backends'}", f"--cache-directory={install.server / 'caches'}",
                "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
                "--metrics-address=127.0.0.1", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
                "--disable-auto-complete-config", f"--model-control-mode={mode}", "--exit-timeout-secs=5"]
        if mode == "explicit":
            args.append("--load-model=*")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=install.env(),
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        self.regions: set[str] = set()
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tritonserver did not become ready (see {self.log}):\n{self.log_tail()}")
            time.sleep(0.1)
        self.regions = self._shm_regions()

    def _shm_regions(self) -> set[str]:
        """The /dev/shm regions of this server's Python backend stubs (named on their command lines): a server
        that crashes leaves them behind, so stop() removes them."""
        regions = set()
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or os.getpgid(int(proc.name)) != self.proc.pid:
                    continue
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except (OSError, ProcessLookupError):
                continue
            regions.update(a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region_"))
        return regions

    def _ready(self) -> bool:
        import http.client

        conn = http.client.HTTPConnection(*self.http.split(":"), timeout=2)
        try:
            conn.request("GET", "/v2/health/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, wait: bool = True) -> "TritonServer":
        """SIGTERM the server (it unloads its models, and its backend stubs end with it); ``wait=False`` returns at
        once - call ``stop()`` again to wait. Whatever is left after 20 s is killed, with its process group."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        if wait:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            try:  # stubs left behind by a crash share the server's process group (start_new_session)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for region in self.regions:  # a clean exit removed them already
                Path("/dev/shm", region).unlink(missing_ok=True)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
