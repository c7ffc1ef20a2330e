"""An emulated arm64 Python for tests: a Debian arm64 sysroot run with qemu-user-static (../shared/ARM64.md,
light path). Built once from the machine's own Debian mirror (~15 MB of debs) and cached as a zstd tarball
under build/ keyed by its recipe; restoring it takes about a second."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

QEMU = "/usr/bin/qemu-aarch64-static"
PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1"]
# qemu 7.2 shows the host's x86 /proc/cpuinfo to arm64 processes and onnxruntime then dies with SIGSEGV on import;
# a Raspberry Pi 4 cpuinfo inside the sysroot (qemu -L resolves /proc/cpuinfo there first) avoids it.
FAKE_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(4)
) + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"


def available() -> str | None:
    if not Path(QEMU).is_file():
        return "qemu-user-static is not installed (.ci/run installs it)"
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        return "apt-get/dpkg are needed to build the arm64 sysroot"
    return None


def _sources() -> str:
    parts = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    if Path("/etc/apt/sources.list").is_file():
        parts.insert(0, Path("/etc/apt/sources.list"))
    return "\n".join(f"# {p.name}\n{p.read_text()}" for p in parts)


def _recipe() -> dict:
    return {"packages": PACKAGES, "sources": _sources(), "cpuinfo": FAKE_CPUINFO, "version": 1}


def sysroot(cache: Path) -> Path:
    """The extracted arm64 sysroot (SYSROOT/usr/bin/python3.11, SYSROOT/proc/cpuinfo)."""
    key = hashlib.sha256(json.dumps(_recipe(), sort_keys=True).encode()).hexdigest()[:12]
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / f"arm64-sysroot-{key}"
    tarball = cache / f"arm64-sysroot-{key}.tar.zst"
    with open(cache / ".arm64.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").is_file():
            return root
        shutil.rmtree(root, ignore_errors=True)
        if not tarball.is_file():
            _build(cache / f"arm64-build-{key}", tarball)
        root.mkdir()
        subprocess.run(["tar", "--zstd", "-xf", str(tarball), "-C", str(root)], check=True)
        (root / ".complete").touch()
    return root


def _run(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:1] + cmd[-3:])} failed ({proc.returncode}): {proc.stderr[-800:]}")


def _build(work: Path, tarball: Path) -> None:
    work = work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    apt = work / "apt"
    for d in ("state/lists/partial", "cache/archives/partial", "parts", "prefs"):
        (apt / d).mkdir(parents=True)
    (apt / "status").write_text("")
    # the machine's own mirrors (never a hard-coded host)
    for p in [*Path("/etc/apt/sources.list.d").glob("*.sources"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        shutil.copy2(p, apt / "parts" / p.name)
    if Path("/etc/apt/sources.list").is_file():
        shutil.copy2("/etc/apt/sources.list", apt / "parts" / "host.list")
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64", "-o", f"Dir::State={apt / 'state'}",
            "-o", f"Dir::State::status={apt / 'status'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", f"Dir::Etc::SourceParts={apt / 'parts'}", "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::Preferences={apt / 'prefs' / 'none'}", "-o", f"Dir::Etc::PreferencesParts={apt / 'prefs'}",
            "-o", "Debug::NoLocking=1", "-q"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", *opts, "update"], env=env)
    _run(["apt-get", *opts, "install", "-y", "--download-only", "--no-install-recommends", *PACKAGES], env=env)
    root = work / "root"
    root.mkdir()
    debs = sorted((apt / "cache" / "archives").glob("*.deb"))
    if not debs:
        raise RuntimeError("apt downloaded no arm64 packages")
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(root)])
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(FAKE_CPUINFO)
    tmp = tarball.with_suffix(".partial")
    subprocess.run(["tar", "--zstd", "-cf", str(tmp), "-C", str(root), "."], check=True)
    tmp.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)


RUNTIME = ["onnxruntime==1.32.0", "numpy"]  # what a device needs to run a model: nothing else
_PLATFORM = ["--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
             "--python-version", "3.11", "--implementation", "cp"]


def runtime_site(cache: Path) -> Path:
    """A folder of aarch64 wheels of ``RUNTIME`` installed for the sysroot's Python (put it on PYTHONPATH)."""
    import sys

    site = cache / "site-ort1.32.0"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (site / ".complete").is_file():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), *_PLATFORM,
                            *RUNTIME], check=True, capture_output=True)
            (site / ".complete").touch()
    return site


def python_cmd(root: Path) -> list[str]:
    return [QEMU, "-L", str(root), str(root / "usr" / "bin" / "python3.11")]
