"""Benchmark models ON the device over SSH: the building block for ``edgedl bench --remote``.

The device gets the models and the edgedl runtime (numpy, onnxruntime, edgedl; never torch) from an offline
wheelhouse for its own architecture and Python, installed once into a venv keyed by the wheel set and reused by
later runs. Each configuration then runs in its own fresh process there - ``python -m edgedl.stages.bench.worker
CONFIG_JSON``, the same worker local benchmarks use - and its result JSON comes back labelled with the device.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import sha256_file
from edgedl.stages.deploy import DeployConfig, probe, remote
from edgedl.stages.deploy.ssh import SSHTarget

# a built-in profile per device architecture, used for the wheel platform tags and the onnxruntime pin
DEFAULT_PROFILE_FOR_ARCH = {"x86_64": "x86-server", "aarch64": "rpi5"}

_ENSURE_ENV = remote.PRELUDE + r'''
ENV=$1; PY=$2
[ -f "$ENV/.installed" ] && exit 0
"$PY" -m venv "$ENV/venv" >&2 || { echo "creating a venv with $PY failed (install python3-venv)" >&2; exit 24; }
"$ENV/venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check --no-index --find-links "$ENV/wheels" \
    -r "$ENV/requirements.txt" < /dev/null >&2 || { echo "installing the bench runtime failed" >&2; exit 25; }
touch "$ENV/.installed"
'''

_RUN_WORKER = remote.PRELUDE + r'''
ENV=$1; CONFIG=$2
exec "$ENV/venv/bin/python" -m edgedl.stages.bench.worker "$CONFIG" < /dev/null
'''


def _configs(models: list[Path], config: dict | list[dict]) -> list[dict]:
    if isinstance(config, dict):
        if "model" in config:
            raise EdgeDLError("give the bench config without 'model': it is run once per model")
        return [{**config, "model": str(m)} for m in models]
    known = {str(m) for m in models}
    for c in config:
        if c.get("model") not in known:
            raise EdgeDLError(f"bench config names model {c.get('model')!r}, which is not among the models pushed")
    return [dict(c) for c in config]


def remote_bench(target: SSHTarget, models: list[Path], config: dict | list[dict], *, remote_dir: str = "edgedl-bench",
                 remote_python: str = "python3", profile: str | None = None, cache_dir: Path | None = None,
                 timeout_s: float = 600, progress: bool = True) -> dict[str, Any]:
    """Push ``models`` and the runtime to ``target``, run each configuration there, return the parsed results.

    ``config``: one JSON-able worker config applied to every model, or a list of configs whose ``model`` is one of
    ``models``. Returns ``{"host", "device": probe facts, "environment": the device's, "results": [...]}``; each
    result carries ``"device": host`` and its ``model`` is the local path again.
    """
    from edgedl.console import progress as progress_bar
    from edgedl.stages.package import cache_root, edgedl_wheel, wheelhouse, _pins
    from edgedl.stages.profiles import load_profile

    models = [Path(m) for m in models]
    for m in models:
        if not m.is_file():
            raise EdgeDLError(f"model {m} does not exist")
    configs = _configs(models, config)
    if any(c.get("engine", "onnxruntime") != "onnxruntime" for c in configs):
        raise EdgeDLError("only the onnxruntime engine runs on a device (the device gets no torch); drop the torch baseline")
    dconfig = DeployConfig(target=target, remote_dir=remote_dir, remote_python=remote_python)
    with progress_bar(f"benchmarking on {target.label}", total=3 + len(configs), enabled=progress) as advance:
        facts = probe(dconfig)
        if not facts.python:
            raise EdgeDLError(f"{remote_python} was not found on {target.label}; install Python there or pass the path")
        if not facts.venv:
            raise EdgeDLError(f"{remote_python} on {target.label} cannot create virtual environments; install python3-venv")
        name = profile or DEFAULT_PROFILE_FOR_ARCH.get(facts.arch)
        if name is None:
            raise EdgeDLError(f"{target.label} is {facts.arch}; edgedl has wheels for {', '.join(DEFAULT_PROFILE_FOR_ARCH)} only")
        prof = load_profile(name)
        if prof.arch != facts.arch:
            raise EdgeDLError(f"{target.label} is {facts.arch} but profile {prof.name} is for {prof.arch}")
        prof.check_python(facts.python)
        advance(info="device checked")

        cache = cache_root(cache_dir)
        wheels_dir, _ = wheelhouse(prof, facts.python, cache)
        own = edgedl_wheel(cache)
        with tempfile.TemporaryDirectory(prefix="edgedl-remote-bench-") as tmp:
            kit = Path(tmp) / "env"
            (kit / "wheels").mkdir(parents=True)
            for whl in [*wheels_dir.glob("*.whl"), own]:
                (kit / "wheels" / whl.name).symlink_to(whl.resolve())
            pins = _pins(kit / "wheels")
            (kit / "requirements.txt").write_text("\n".join(pins) + "\n")
            key = hashlib.sha256("\n".join(sorted(sha256_file(w) for w in (kit / "wheels").glob("*.whl"))).encode()).hexdigest()[:16]
            env_dir = f"env-{facts.arch}-py{facts.python}-{key}"
            models_dir = Path(tmp) / "models"
            models_dir.mkdir()
            remote_of: dict[str, str] = {}
            # the models, and the input data (.npz) configurations name, go as content-addressed copies
            inputs = [Path(c["input_data"]) for c in configs if c.get("input_data")]
            for m in dict.fromkeys([*models, *inputs]):
                if not m.is_file():
                    raise EdgeDLError(f"input data file {m} does not exist")
                digest = sha256_file(m)[:12]
                (models_dir / f"{digest}-{m.name}").symlink_to(m.resolve())
                remote_of[str(m)] = f"{facts.directory}/models/{digest}-{m.name}"
            probe_env = target.run('test -f "$1/$2/.installed" && echo yes || echo no', remote_dir, env_dir, timeout=60)
            if probe_env.stdout.strip() != "yes":
                target.copy_dir(kit, f"{remote_dir}/{env_dir}", use_rsync=facts.rsync, copy_links=True)
                proc = target.run(_ENSURE_ENV, remote_dir, env_dir, remote_python, check=False, timeout=900)
                if proc.returncode != 0:
                    raise EdgeDLError(f"installing the bench runtime on {target.label} failed: "
                                      f"{' | '.join(proc.stderr.strip().splitlines()[-3:])}")
            advance(info="runtime ready")
            target.copy_dir(models_dir, f"{remote_dir}/models", use_rsync=facts.rsync, copy_links=True, delete=False)
            advance(info="models copied")

        results = []
        for cfg in configs:
            local_model = cfg["model"]
            payload = json.dumps({**cfg, "model": remote_of[local_model],
                                  "input_data": remote_of[str(Path(cfg["input_data"]))] if cfg.get("input_data") else None})
            proc = target.run(_RUN_WORKER, remote_dir, env_dir, payload, check=False, timeout=timeout_s)
            lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
            try:
                result = json.loads(lines[-1]) if lines else None
            except ValueError:
                result = None
            if result is None or proc.returncode != 0 or "error" in result:
                why = result.get("error") if result else " | ".join(proc.stderr.strip().splitlines()[-3:]) or "no output"
                if proc.returncode in (132, -4) or "Illegal instruction" in proc.stderr:
                    why += " (Illegal instruction: this onnxruntime build does not suit the device's CPU - check the profile's known-bad versions)"
                raise EdgeDLError(f"benchmark of {Path(local_model).name} on {target.label} failed: {why}")
            result["model"] = local_model
            result["model_name"] = Path(local_model).stem  # not the content-addressed name of the pushed copy
            result["remote_model"] = remote_of[local_model]
            result["device"] = target.label
            results.append(result)
            advance(info=Path(local_model).name)
    return {"host": target.label, "device": facts.__dict__, "profile": prof.name,
            "environment": results[0]["environment"] if results else None, "results": results,
            "command": f"python -m edgedl.stages.bench.worker {shlex.quote('CONFIG_JSON')}"}
