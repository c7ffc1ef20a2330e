"""Running ansible-core: where the playbooks are, the environment, one subprocess per run.

edgedl never writes playbook text: it runs the readable files in ``deploy/ansible/`` (or the user's copy, via
``--playbook-dir``) and passes its variables as ``--extra-vars @vars.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.resources import deploy_dir

PLAYBOOK_DIR = deploy_dir("ansible")  # deploy/ansible in a checkout, edgedl/_deploy/ansible when installed


def tool(name: str) -> str:
    """ansible-playbook / ansible-inventory: next to this Python first (a venv), then on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        raise EdgeDLError(f"{name} is not installed; install the fleet extra: pip install 'edgedl[fleet]' (ansible-core)")
    return found


def playbook_dir(explicit: Path | None = None) -> Path:
    d = Path(explicit) if explicit else PLAYBOOK_DIR
    if not (d / "rollout.yml").is_file():
        raise EdgeDLError(f"no rollout.yml in {d}; pass --playbook-dir pointing at a copy of edgedl's deploy/ansible")
    return d


def environment(pdir: Path, forks: int) -> dict[str, str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_FORKS": str(forks),
           "ANSIBLE_RETRY_FILES_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    if (pdir / "ansible.cfg").is_file():
        env["ANSIBLE_CONFIG"] = str(pdir / "ansible.cfg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_playbook(pdir: Path, playbook: str, inventory: Path, extra_vars: dict, run_dir: Path, *, forks: int = 10,
                 check: bool = False, on_line=None, timeout: float = 3600) -> subprocess.CompletedProcess:
    """ansible-playbook PLAYBOOK -i INVENTORY -e @vars.json [--check]; the full output goes to run_dir/ansible.log."""
    vars_file = run_dir / f"{Path(playbook).stem}-vars.json"
    vars_file.write_text(json.dumps(extra_vars, indent=2))
    cmd = [tool("ansible-playbook"), str(pdir / playbook), "-i", str(Path(inventory).resolve()), "--extra-vars", f"@{vars_file}"]
    if check:
        cmd.append("--check")
    log_path = run_dir / "ansible.log"
    lines: list[str] = []
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=pdir,
                                env=environment(pdir, forks))
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if on_line:
                    on_line(line)
            proc.wait()
        finally:
            timer.cancel()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host: {host: {ok, changed, unreachable, failed, skipped, rescued, ignored}}."""
    out: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line and "=" in line:
            host, _, counters = line.partition(":")
            out[host.strip()] = {k: int(v) for k, v in (c.split("=") for c in counters.split() if "=" in c)}
    return out


def unreachable_messages(output: str) -> dict[str, str]:
    """host -> ssh's message, from 'fatal: [host]: UNREACHABLE! => {...}' lines."""
    out = {}
    for line in output.splitlines():
        if "UNREACHABLE!" in line and line.startswith("fatal: ["):
            host = line[len("fatal: ["):line.index("]")]
            try:
                msg = json.loads(line.split("=>", 1)[1]).get("msg", "")
            except (ValueError, IndexError):
                msg = line
            out[host] = " ".join(str(msg).split())[:300]
    return out
