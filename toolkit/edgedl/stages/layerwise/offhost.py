"""Run the capture worker (``worker.py``) somewhere other than this process: another Python on this machine
(e.g. an emulated aarch64 one, or a venv with another onnxruntime), or a device over SSH.

The device gets the edgedl runtime the way ``bench --remote`` installs it (``stages.device.runtime.stage_runtime``:
an offline wheelhouse for its architecture in a venv reused across runs, the models copied content-addressed); this
module then copies
the worker, the inputs and the request next to them, runs the worker with that venv's Python, and reads the
tensors back (base64 over the same SSH connection: the SSH layer has no copy in that direction).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edgedl.errors import EdgeDLError

WORKER = Path(__file__).with_name("worker.py")


@dataclass(frozen=True)
class WorkerJob:
    """Models (file, output names) to run on the same batches, and how."""

    models: tuple[tuple[Path, tuple[str, ...]], ...]
    input_names: tuple[str, ...]
    batches: tuple[dict, ...]  # input name -> array
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1

    def write(self, folder: Path, paths: list[str] | None = None, base: str | None = None) -> Path:
        """Write ``in.npz`` and ``request.json`` into ``folder``; ``paths``/``base``: where the models and this
        folder are on the machine that runs the worker (default: here)."""
        np.savez(folder / "in.npz", **{f"b{i}_{j}": np.asarray(batch[name]) for i, batch in enumerate(self.batches)
                                      for j, name in enumerate(self.input_names)})
        where = base or str(folder)
        request = {"feeds": f"{where}/in.npz", "out": f"{where}/out.npz", "inputs": list(self.input_names),
                   "batches": len(self.batches), "providers": list(self.providers), "threads": self.threads,
                   "models": [{"path": p, "outputs": list(outs)} for p, (_, outs) in
                              zip(paths or [str(m) for m, _ in self.models], self.models)]}
        (folder / "request.json").write_text(json.dumps(request))
        shutil.copyfile(WORKER, folder / "worker.py")
        return folder / "request.json"

    def read(self, data: bytes) -> list[list[dict[str, np.ndarray]]]:
        """out.npz -> per batch, per model: output name -> array."""
        arrays = np.load(io.BytesIO(data))
        return [[{name: arrays[f"m{k}_b{i}_{o}"] for o, name in enumerate(outs)}
                 for k, (_, outs) in enumerate(self.models)] for i in range(len(self.batches))]


def _result(stdout: str, stderr: str, returncode: int, where: str) -> dict:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if result is None or not result.get("ok") or returncode != 0:
        why = (result or {}).get("error") or " | ".join(stderr.strip().splitlines()[-3:]) or f"exit {returncode}"
        if returncode in (132, -4) or "Illegal instruction" in stderr:
            why += " (Illegal instruction: this onnxruntime build does not suit the CPU)"
        raise EdgeDLError(f"running the model {where} failed: {why}")
    return result


def run_with_python(job: WorkerJob, command: tuple[str, ...], timeout_s: float = 1800) -> tuple[list, dict]:
    """Run the worker with another Python on this machine (``command``: its argv, e.g. ``qemu-aarch64-static -L
    ROOT ROOT/usr/bin/python3.11``); returns (tensors per batch and model, the worker's environment)."""
    where = f"with {' '.join(command)}"
    with tempfile.TemporaryDirectory(prefix="edgedl-compare-") as tmp:
        request = job.write(Path(tmp))
        try:
            proc = subprocess.run([*command, str(Path(tmp) / "worker.py"), str(request)], capture_output=True,
                                  text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise EdgeDLError(f"cannot run {command[0]}: no such program; give the Python to run the model "
                              "with, e.g. /path/to/venv/bin/python") from None
        except subprocess.TimeoutExpired:
            raise EdgeDLError(f"running the model {where} took over {timeout_s:.0f} s") from None
        result = _result(proc.stdout, proc.stderr, proc.returncode, where)
        return job.read((Path(tmp) / "out.npz").read_bytes()), result["environment"]


def run_on_device(job: WorkerJob, target, remote_dir: str = "edgedl-bench", remote_python: str = "python3",
                  cache_dir: Path | None = None, timeout_s: float = 1800) -> tuple[list, dict]:
    """Run the worker on ``target`` (an ``SSHTarget``) with the edgedl runtime ``bench --remote`` installs there."""
    from edgedl.stages.device.runtime import stage_runtime

    shapes = {name: list(np.asarray(value).shape) for name, value in job.batches[0].items()}
    staged = stage_runtime(target, [m for m, _ in job.models], remote_dir=remote_dir, remote_python=remote_python,
                           cache_dir=cache_dir)
    remote_models = [staged.remote_of[str(Path(m))] for m, _ in job.models]
    python = staged.python
    key = hashlib.sha256(json.dumps([remote_models, shapes, len(job.batches)]).encode()).hexdigest()[:12]
    folder = str(PurePosixPath(remote_models[0]).parent.parent / f"debug-{key}")
    with tempfile.TemporaryDirectory(prefix="edgedl-compare-") as tmp:
        job.write(Path(tmp), remote_models, folder)
        target.copy_dir(Path(tmp), folder, use_rsync=staged.facts.rsync)
    try:
        proc = target.run('"$1" "$2/worker.py" "$2/request.json" < /dev/null', python, folder, check=False,
                          timeout=timeout_s)
        result = _result(proc.stdout, proc.stderr, proc.returncode, f"on {target.label}")
        fetched = target.run('base64 < "$1/out.npz"', folder, timeout=timeout_s)
        data = base64.b64decode("".join(fetched.stdout.split()))
    finally:
        target.run('rm -rf "$1"', folder, check=False)
    return job.read(data), {**result["environment"], "device": target.label}
