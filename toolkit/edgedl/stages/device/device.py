"""A device: an SSH target and its deploy directory, with one method per ``device.sh`` command, each returning
a typed result (:mod:`edgedl.stages.device.protocol`) or raising one ``EdgeDLError`` that says what the device
refused and what to do. ``edgedl deploy``, ``edgedl bench --remote`` and (through the same device.sh) the Ansible
role all drive a device this way; nothing else interprets the device's exit codes.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from edgedl.errors import EdgeDLError
from edgedl.stages.device import programs
from edgedl.stages.device.protocol import (Activation, DeviceExit, DeviceFacts, DeviceStatus, Health, Requirements,
                                           key_values)
from edgedl.stages.device.ssh import SSHTarget


class DeviceError(EdgeDLError):
    """A device command that failed: ``code`` is its exit code (a :class:`DeviceExit` where the table knows it),
    ``reason`` the device's own last line."""

    def __init__(self, message: str, code: DeviceExit | int, reason: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.code, self.reason = code, reason


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return ((proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"])[-1]


def _tail(proc: subprocess.CompletedProcess, lines: int = 3) -> str:
    return " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-lines:]) or "no output"


def _warnings(stderr: str) -> list[str]:
    return [line[len("warning: "):] for line in stderr.splitlines() if line.startswith("warning: ")]


@dataclass(frozen=True)
class DeviceCheck:
    """``device.sh check``: the device, and what it is worth knowing that did not stop the deploy."""

    facts: DeviceFacts
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Device:
    target: SSHTarget
    directory: str = "edgedl"  # the deploy directory, relative to the login's home
    python: str = "python3"  # the device's Python that builds venvs and runs the health gate

    @property
    def label(self) -> str:
        return self.target.label

    # --- running one command ---------------------------------------------------------------------------------
    def _run(self, command: str, *args: str, timeout: float = 60, input: bytes | None = None,
             ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        """``device.sh DIR COMMAND ARGS``; an exit code outside ``ok`` raises. Two codes mean the same to every
        command: the directory is unusable, or a value was refused (checked here first: values.py)."""
        proc = self.target.run(programs.DEVICE, self.directory, command, *args, check=False, timeout=timeout,
                               input=input)
        code = DeviceExit.of(proc.returncode)
        if code == DeviceExit.DIR:
            raise DeviceError(f"cannot create --remote-dir {self.directory} on {self.label}: {proc.stderr.strip()}",
                              code, _last_line(proc))
        if code == DeviceExit.VALUE:
            raise DeviceError(f"{_last_line(proc)} (on {self.label}); nothing was changed", code, _last_line(proc))
        if proc.returncode not in ok:
            raise self.failed(proc)
        return proc

    def failed(self, proc: subprocess.CompletedProcess, message: str | None = None) -> DeviceError:
        return DeviceError(message or f"a command on {self.label} failed (exit {proc.returncode}): {_tail(proc)}",
                           DeviceExit.of(proc.returncode), _last_line(proc))

    # --- what the device is ----------------------------------------------------------------------------------
    def facts(self) -> DeviceFacts:
        return DeviceFacts.parse(self._run("facts", self.python).stdout)

    def check(self, needs: Requirements, service: str = "auto", bundle: str = "the bundle") -> DeviceCheck:
        """Whether the bundle can run here (``device.sh check``: architecture, Python, venv, disk, memory,
        systemd when asked for); refuses with one error naming what to change."""
        from edgedl.stages.profiles import default_profile

        proc = self._run("check", f"py={self.python}", f"label={self.label}", f"bundle={bundle}", f"service={service}",
                         *needs.args(), ok=tuple(range(256)))
        if proc.returncode == DeviceExit.OK:
            return DeviceCheck(DeviceFacts.parse(proc.stdout), tuple(_warnings(proc.stderr)))
        code = DeviceExit.of(proc.returncode)
        try:
            facts = DeviceFacts.parse(proc.stdout)
        except EdgeDLError:
            raise self.failed(proc) from None
        hints = {
            DeviceExit.ARCH: f"package it for a matching target (e.g. --target {default_profile(facts.arch) or 'PROFILE'})",
            DeviceExit.NO_PYTHON: "e.g. apt install python3 python3-venv, or pass --remote-python PATH",
            DeviceExit.PYTHON: f"re-package with --python {facts.python} (profile {needs.profile} supports "
                               f"{', '.join(needs.pythons)})",
            DeviceExit.DISK: "or pass another --remote-dir",
        }
        if code not in (*hints, DeviceExit.NO_VENV, DeviceExit.MEMORY, DeviceExit.NO_SYSTEMD):
            raise self.failed(proc)
        raise DeviceError(_last_line(proc), code, _last_line(proc), hint=hints.get(code))

    # --- the deploy lock -------------------------------------------------------------------------------------
    def lock(self, token: str, who: str, take_over: bool = False) -> str | None:
        """Take (or refresh) the directory's deploy lock; returns the note when a stale or broken lock was taken over."""
        proc = self._run("lock", token, who, *(["break"] if take_over else []), ok=(0, DeviceExit.LOCKED))
        if proc.returncode == DeviceExit.LOCKED:
            raise DeviceError(f"{_last_line(proc)} on {self.label}; wait for it to finish, or pass --break-lock if it "
                              "died; nothing was changed", DeviceExit.LOCKED, _last_line(proc))
        return _last_line(proc) if "took over" in proc.stderr else None

    def unlock(self, token: str) -> None:
        self._run("unlock", token, ok=tuple(range(256)))

    @contextlib.contextmanager
    def locked(self, take_over: bool = False, notes: list[str] | None = None) -> Iterator[Callable[[], None]]:
        """Hold the deploy directory's lock for the block: a second deploy, rollout or rollback to the same
        directory is refused instead of interleaving with this one. Yields ``refresh()``: call it between long
        steps; a lock not refreshed for 15 minutes counts as left by a deploy that died, and is taken over.
        ``take_over`` takes over any lock. A take-over is appended to ``notes``."""
        import getpass
        import os
        import secrets
        import socket

        token = secrets.token_hex(8)
        who = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
        note = self.lock(token, who, take_over)
        if note and notes is not None:
            notes.append(note)
        try:
            yield lambda: self.lock(token, who) and None
        finally:
            with contextlib.suppress(EdgeDLError):  # unreachable now: the lock goes stale after 15 minutes
                self.unlock(token)

    # --- a release's life ------------------------------------------------------------------------------------
    def stage(self, bundle: Path, release: str, link_dest: str | None, rsync: bool) -> None:
        """Copy a bundle directory into ``staging/RELEASE`` (hard-linking files unchanged since ``link_dest``'s
        release); a failed or interrupted copy leaves no staging copy behind."""
        try:
            self.target.copy_dir(bundle, f"{self.directory}/staging/{release}",
                                 link_dest=f"../../releases/{link_dest}" if link_dest else None, use_rsync=rsync)
        except BaseException:
            with contextlib.suppress(Exception):
                self.discard(release)
            raise

    def install(self, release: str, trust_key: bytes | None = None, trust_name: str | None = None) -> None:
        """``staging/RELEASE`` verified again on the device (hashes; the signature when a key is trusted) ->
        ``releases/RELEASE`` with its venv. ``trust_key``: a public key the device keeps as ``trust_name`` and
        checks this and later bundles with. A refused or failed install leaves no staging copy behind."""
        try:
            proc = self._run("install", release, self.python, *([trust_name] if trust_name else []), input=trust_key,
                             timeout=900, ok=tuple(range(256)))
        except BaseException:
            with contextlib.suppress(Exception):
                self.discard(release)
            raise
        if proc.returncode == 0:
            return
        self.discard(release)
        code, last = DeviceExit.of(proc.returncode), _last_line(proc)
        if code == DeviceExit.UNSIGNED:
            raise DeviceError(f"{last} on {self.label}; the running release was not touched - sign the bundle "
                              "(edgedl package --sign KEY) with the key the device trusts", code, last)
        if code == DeviceExit.VERIFY:
            raise DeviceError(f"the copy on {self.label} does not match the bundle's manifest ({last}); the running "
                              "release was not touched - deploy again", code, last)
        raise DeviceError(f"installing release {release} on {self.label} failed: {_tail(proc)}; the running release "
                          "was not touched", code, last)

    def discard(self, release: str) -> None:
        self._run("discard", release, ok=tuple(range(256)))

    def activate(self, release: str, host: str, port: int, auth: str = "keep", service: str = "keep",
                 trust_name: str | None = None, api_key: str | None = None) -> Activation:
        """Stop the running release, switch ``current`` to ``release`` and start it (``auth``: set | keep | auto |
        none, ``api_key`` with set; ``service``: auto | systemd | process | keep)."""
        proc = self._run("activate", release, host, str(port), auth, service, *([trust_name] if trust_name else []),
                         input=api_key.encode() if api_key is not None else None, timeout=180, ok=tuple(range(256)))
        if proc.returncode != 0:
            raise DeviceError(_tail(proc), DeviceExit.of(proc.returncode), _last_line(proc))
        return Activation.parse(proc.stdout)

    def wait_ready(self, release: str, timeout: float, reference: str = "-") -> Health:
        """device_health.py on the device: ready, every model of the release served (and, with a reference
        outputs file there, a smoke inference that matches it)."""
        proc = self._run("wait-ready", self.python, str(timeout), release, programs.HEALTH, reference,
                         timeout=timeout + 60, ok=tuple(range(256)))
        return Health.parse(proc.returncode, proc.stdout, proc.stderr)

    def restore(self, release: str, previous: str | None) -> str | None:
        """Mark ``release`` failed and go back to ``previous`` (its service settings too); returns what runs now."""
        proc = self._run("restore", release, previous or "", timeout=180)
        return dict(key_values(proc.stdout)).get("restored") or None

    def prune(self, keep: int) -> list[str]:
        """Keep the current release and the ``keep``-1 most recently used others; returns the releases removed."""
        proc = self._run("prune", str(max(keep, 1)), timeout=120)
        return [value for key, value in key_values(proc.stdout) if key == "pruned"]

    def stop(self) -> None:
        self._run("stop", timeout=120)

    def status(self, show_key: bool = False) -> DeviceStatus:
        return DeviceStatus.parse(self._run("status", *(["show-key"] if show_key else [])).stdout)

    def logs(self, release: str | None = None, lines: int = 50) -> str:
        proc = self._run("logs", release or "", str(lines),
                         ok=(0, DeviceExit.NOTHING_DEPLOYED, DeviceExit.NO_LOG))
        if proc.returncode != 0:
            raise DeviceError(f"{proc.stderr.strip()} on {self.label}; deploy a bundle first (or check --remote-dir)",
                              DeviceExit.of(proc.returncode), _last_line(proc))
        return proc.stdout

    def log_tail(self, release: str, lines: int = 15) -> str:
        """The last lines of a release's log, or nothing: for an error message, never an error itself."""
        try:
            return self.logs(release, lines).strip()
        except EdgeDLError:
            return ""

    # --- a runtime to measure in (edgedl bench --remote) ------------------------------------------------------
    def ensure_env(self, env: str, kit: Path, rsync: bool) -> None:
        """A venv in ``DIR/ENV`` from the wheelhouse ``kit`` (``wheels/`` + ``requirements.txt``), copied and
        installed only when the device does not have it yet."""
        proc = self._run("ensure-env", env, self.python, timeout=900, ok=tuple(range(256)))
        if proc.returncode == DeviceExit.MISSING_COPY:
            self.target.copy_dir(kit, f"{self.directory}/{env}", use_rsync=rsync, copy_links=True)
            proc = self._run("ensure-env", env, self.python, timeout=900, ok=tuple(range(256)))
        if proc.returncode != 0:
            raise self.failed(proc, f"installing the bench runtime on {self.label} failed: {_tail(proc)}")

    def bench(self, env: str, config_json: str, timeout: float) -> subprocess.CompletedProcess:
        """One bench worker run in ``ENV``'s venv (its JSON result is the last line of stdout)."""
        return self._run("bench", env, config_json, timeout=timeout, ok=tuple(range(256)))
