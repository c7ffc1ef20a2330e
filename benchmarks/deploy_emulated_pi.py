"""Walk through a real deploy to the stand-in Raspberry Pi (an emulated arm64 Debian root filesystem running sshd,
tests/deploy/arm64_rootfs.py) and a remote benchmark on it; prints every command with its real output and writes
benchmarks/results/deploy_emulated_pi.md. Needs root, qemu-user-static, binfmt-support, debootstrap (the root
filesystem is built once, ~5-9 min, then restored from build/arm64 in seconds).

    .venv/bin/python benchmarks/deploy_emulated_pi.py BUNDLE_DIR      # a bundle for rpi4/rpi5 with a 'cnn' model

Emulation is ~250x slower than a Pi for compute: the latency printed is NOT a speed number; the phases show where
a deploy spends its time (the emulated pip install dominates).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
import arm64_rootfs  # noqa: E402
from loopback_sshd import free_port  # noqa: E402


def main() -> None:
    bundle = Path(sys.argv[1]).resolve()
    work = Path("/tmp/edgedl-pi-demo")
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir()
    pi = arm64_rootfs.boot(work, ROOT / "build" / "arm64")
    port = pi.port
    conn = ["--host", f"root@127.0.0.1:{port}", "--identity", str(pi.identity), "--known-hosts",
            str(pi.known_hosts), "--ssh-config", "/dev/null"]
    transcript: list[str] = []

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "120"}, cwd=ROOT)
        shown = " ".join(map(str, args)).replace(str(work), "~/pi").replace(str(ROOT) + "/", "")
        transcript.append(f"$ edgedl {shown}\n{proc.stdout}{proc.stderr}".rstrip())
        print(transcript[-1], flush=True)
        return proc

    try:
        serve_port = free_port()
        cli("deploy", bundle, *conn, "--serve-port", serve_port, "--ready-timeout", "300")
        cli("deploy", "status", *conn)
        cli("deploy", "logs", *conn, "-n", "3")
        import numpy as np
        import tritonclient.http as httpclient

        from edgedl.recipe import load_recipe
        from edgedl.runtime import load

        x = load_recipe("cnn").split("test").inputs["image"][:16]
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        remote = httpclient.InferenceServerClient(f"127.0.0.1:{serve_port}").infer("cnn", [inp]).as_numpy("logits")
        local = load(bundle / "models/cnn/1/model.onnx").run({"image": x})["logits"]
        line = (f"tritonclient -> emulated arm64 server vs x86 onnxruntime on 16 test digits: max |diff| "
                f"{float(np.abs(remote - local).max()):.3g}, same argmax: {bool((remote.argmax(1) == local.argmax(1)).all())}")
        transcript.append(line)
        print(line)

        from edgedl.stages.bench.remote import remote_bench

        target = pi.target()
        t0 = time.time()
        out = remote_bench(target, [bundle / "models/cnn/1/model.onnx"], {"threads": 1, "batch": 1, "warmup": 3,
                           "iterations": 30, "duration_s": None, "placement": False}, progress=False,
                           cache_dir=ROOT / "build" / "cache")
        res, env = out.results[0], out.environment
        line = (f"remote_bench on {out.host} in {time.time() - t0:.0f} s: machine {env['machine']}, Python "
                f"{env['python']}, onnxruntime {env['onnxruntime']['version']}; p50 {res['latency_ms']['p50_ms']:.3f} ms "
                "(emulated - not a speed number)")
        transcript.append(line)
        print(line)
    finally:
        arm64_rootfs.shutdown(pi)
    out_md = ROOT / "benchmarks" / "results" / "deploy_emulated_pi.md"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("# deploy to the emulated Raspberry Pi (qemu-user arm64 rootfs, loopback sshd)\n\n"
                      f"`.venv/bin/python benchmarks/deploy_emulated_pi.py {bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle}`\n\n"
                      "```\n" + "\n\n".join(transcript) + "\n```\n")


if __name__ == "__main__":
    main()
