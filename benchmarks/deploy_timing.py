"""Time the package -> deploy -> rollback path against a real loopback OpenSSH server (this machine is the device).

    .venv/bin/python benchmarks/deploy_timing.py [--runs 3] [--out benchmarks/results]

Measures (median of --runs, each phase as `edgedl deploy --json` reports it): `edgedl package` with a warm
wheel cache, a deploy that updates a running release (probe, rsync copy with hard links to the previous release,
offline venv install, switch + start until /v2/health/ready), a manual rollback, a broken release's automatic
rollback, and the SSH round trip. Needs root (sshd with a throwaway config), as the deploy tests do.
Loopback has no network cost: on a Pi over Wi-Fi the copy phase grows with the bundle (~46 MB, mostly wheels).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "deploy"))

import loopback_sshd  # noqa: E402
from conftest import build_zoo  # noqa: E402

EDGEDL = [sys.executable, "-m", "edgedl"]
ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}


def edgedl(*args, check=True):
    import os

    t = time.perf_counter()
    proc = subprocess.run([*EDGEDL, *map(str, args)], capture_output=True, text=True, env={**os.environ, **ENV})
    wall = time.perf_counter() - t
    if check and proc.returncode != 0:
        raise SystemExit(f"edgedl {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc, wall


def median(values):
    return round(statistics.median(values), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    zoo = build_zoo(ROOT / "build" / "test-zoo")
    work = Path(tempfile.mkdtemp(prefix="edgedl-deploy-bench-"))
    server = loopback_sshd.start(work / "sshd")
    remote = work / "device"
    port = loopback_sshd.free_port()
    conn = [*server.cli_args(remote), "--serve-host", "127.0.0.1", "--serve-port", str(port)]
    out: dict = {"runs": args.runs, "machine": platform.machine(), "python": platform.python_version()}
    try:
        edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", work / "warmup")
        package_s = []
        for i in range(args.runs):
            _, wall = edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", work / f"b{i}")
            package_s.append(wall)
        out["package_warm_cache_s"] = median(package_s)
        out["bundle_mb"] = round(sum(p.stat().st_size for p in (work / "b0").rglob("*") if p.is_file()) / 2**20, 1)

        proc, wall = edgedl("deploy", work / "b0", *conn[:-4], *conn[-4:], "--json")
        out["first_deploy_s"] = round(wall, 2)
        out["first_deploy_phases_s"] = json.loads(proc.stdout)["timings_s"]
        updates, phases = [], []
        for i in range(args.runs):
            proc, wall = edgedl("deploy", work / f"b{(i % (args.runs - 1)) + 1 if args.runs > 1 else 0}", *conn, "--json")
            updates.append(wall)
            phases.append(json.loads(proc.stdout)["timings_s"])
        out["update_deploy_s"] = median(updates)
        out["update_deploy_phases_s"] = {k: median([p[k] for p in phases]) for k in phases[0]}
        rollbacks = []
        for _ in range(args.runs):
            _, wall = edgedl("deploy", "rollback", *server.cli_args(remote), "--json")
            rollbacks.append(wall)
        out["manual_rollback_s"] = median(rollbacks)

        broken = work / "broken"
        shutil.copytree(work / "b0", broken)
        sys.path.insert(0, str(ROOT / "tests"))
        from test_deploy import make_broken  # noqa: E402

        shutil.rmtree(broken)
        make_broken(work / "b0", broken)
        proc, wall = edgedl("deploy", broken, *conn, "--ready-timeout", "60", check=False)
        assert proc.returncode == 1 and "rolled back" in proc.stderr, proc.stderr
        out["broken_release_detected_and_rolled_back_s"] = round(wall, 2)

        target = server.target()
        rtts = []
        for _ in range(10):
            t = time.perf_counter()
            target.run("true")
            rtts.append(time.perf_counter() - t)
        out["ssh_round_trip_s"] = median(rtts)
        out["load_average"] = list(__import__("os").getloadavg())
    finally:
        loopback_sshd.stop_release_services(remote)
        loopback_sshd.stop(server)
        shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy_timing.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# deploy timing (loopback OpenSSH, this machine as the device)", "",
             f"`.venv/bin/python benchmarks/deploy_timing.py --runs {args.runs}` — median of {args.runs} runs; "
             f"load average at the end {out['load_average']} (shared 2-core machine).", "",
             "| what | seconds |", "|---|---|"]
    for key in ("package_warm_cache_s", "first_deploy_s", "update_deploy_s", "manual_rollback_s",
                "broken_release_detected_and_rolled_back_s", "ssh_round_trip_s"):
        lines.append(f"| {key} | {out[key]} |")
    lines += ["", f"bundle: {out['bundle_mb']} MB (cnn + mlp for x86-server, wheelhouse included)", "",
              f"first deploy phases: {out['first_deploy_phases_s']}", "",
              f"update deploy phases (median): {out['update_deploy_phases_s']}", ""]
    (args.out / "deploy_timing.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
