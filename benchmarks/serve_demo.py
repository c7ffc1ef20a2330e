"""`make demo` step: serve the exported CNN with `edgedl serve`, classify a few test digits through the
unmodified tritonclient (binary tensors), print the predictions, stop the server.

usage: python benchmarks/serve_demo.py build/demo/cnn.onnx [--count 8]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--count", type=int, default=8)
    args = ap.parse_args()
    import tritonclient.http as httpclient

    from edgedl.recipe import load_recipe

    proc = subprocess.Popen([sys.executable, "-m", "edgedl", "serve", str(args.model), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"edgedl serve did not start (exit {proc.poll()})")
            print(line.rstrip(), file=sys.stderr)
            match = re.search(r"ready in .* at http://(\S+)", line)
            url = match.group(1) if match else None
        client = httpclient.InferenceServerClient(url)
        meta = client.get_model_metadata(args.model.stem)
        name = meta["inputs"][0]["name"]
        labels = meta.get("parameters", {}).get("edgedl", {}).get("labels")
        test = load_recipe("cnn").split("test")
        images = test.inputs[name][:args.count].astype(np.float32)
        request = httpclient.InferInput(name, list(images.shape), "FP32")
        request.set_data_from_numpy(images)
        logits = client.infer(args.model.stem, [request]).as_numpy(meta["outputs"][0]["name"])
        predicted = logits.argmax(1)
        print(f"edgedl serve at {url}: {meta['name']} v{meta['versions'][-1]}, {len(images)} test digits via tritonclient")
        print("  true:      " + " ".join(str(int(t)) for t in test.labels[:args.count]))
        print("  predicted: " + " ".join((labels[p] if labels else str(p)) for p in predicted))
        print(f"  correct:   {(predicted == test.labels[:args.count]).sum()}/{len(images)}")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    main()
