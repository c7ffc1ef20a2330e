"""The device side of ``edgedl debug compare``: run ONNX models on given inputs, write every requested tensor.

Standard library, numpy and onnxruntime only, and no edgedl import: the file is copied to the device (or run by
another Python on this machine, such as an emulated aarch64 one) and started as a script::

    python worker.py REQUEST.json

REQUEST: ``{"feeds": "in.npz", "inputs": [names], "batches": N, "out": "out.npz", "providers": [...],
"threads": 1, "models": [{"path": "m.onnx", "outputs": [names]}, ...]}``. ``in.npz`` holds ``b{i}_{j}``: batch i,
input j. ``out.npz`` gets ``m{k}_b{i}_{o}``: model k, batch i, output o. One JSON line goes to stdout:
``{"ok": true, "environment": {...}}`` or ``{"ok": false, "error": "..."}``; exit status 0, or 1 on failure.
"""

from __future__ import annotations

import json
import platform
import sys
import zipfile


def _environment(ort, sessions) -> dict:
    import numpy

    return {"machine": platform.machine(), "python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": ort.__version__, "providers": sessions[0].get_providers() if sessions else []}


def run(request: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(request.get("threads", 1))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = request.get("providers") or ["CPUExecutionProvider"]
    sessions = [ort.InferenceSession(m["path"], sess_options=options, providers=providers) for m in request["models"]]
    feeds = np.load(request["feeds"])
    names = request["inputs"]
    with zipfile.ZipFile(request["out"], "w", zipfile.ZIP_STORED, allowZip64=True) as out:
        for i in range(int(request["batches"])):
            batch = {name: feeds[f"b{i}_{j}"] for j, name in enumerate(names)}
            for k, (model, session) in enumerate(zip(request["models"], sessions)):
                for o, value in enumerate(session.run(model["outputs"], batch)):
                    with out.open(f"m{k}_b{i}_{o}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asarray(value))
    return {"ok": True, "environment": _environment(ort, sessions)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"ok": False, "error": "usage: worker.py REQUEST.json"}))
        return 1
    try:
        with open(argv[0]) as f:
            result = run(json.load(f))
    except Exception as exc:  # reported to the host as one line, which it turns into a user error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {first}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
