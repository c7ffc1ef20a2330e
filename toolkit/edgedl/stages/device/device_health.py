"""Health gate of a release, run on the device with its python3 (standard library only) - by `edgedl deploy`
(device.sh wait-ready) and by the edgedl_release Ansible role (as files/smoke.py, a link to this file):
wait for /v2/health/ready and for every model of the release's manifest to be ready (a server that runs without
one of its models is not this release), then send each reference input to /v2/models/NAME/infer and compare the
outputs with the reference outputs (max abs difference <= atol + rtol * |reference|). Prints one JSON line.
Exit 0: ready and matching, else one of the codes below (device.sh's table, whose E_ names they carry).
Usage: device_health.py URL REFERENCE|- TIMEOUT LOG"""
import json
import sys
import time
import urllib.error
import urllib.request

NOT_READY = 10  # E_NOT_READY: not ready within the timeout
CRASHING = 11  # E_CRASHING: the server keeps crashing on start
SMOKE_FAILED = 12  # E_SMOKE_FAILED: wrong or failed inference
MODEL_MISSING = 13  # E_MODEL_MISSING: a model of the release is not served

base, reference_path, timeout, log = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
deadline = time.time() + timeout


def auth_headers():
    """The server requires `Authorization: Bearer KEY` when its service.env sets EDGEDL_API_KEY (written by `edgedl
    deploy --api-key-file`, kept by fleet rollouts): device.sh wait-ready, which reads service.env, passes it in the
    environment (never on a command line)."""
    import os

    key = os.environ.get("EDGEDL_API_KEY", "")
    return {"Authorization": "Bearer " + key} if key else {}


HEADERS = auth_headers()


def crashes():
    try:
        text = open(log, errors="replace").read()
    except OSError:
        return 0
    return text[text.rfind("--- "):].count("server exited")  # by supervise.sh or the unit's ExecStopPost


def log_tail():
    try:
        lines = open(log, errors="replace").read().strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line for line in lines[-4:] if line.strip())[-400:]


def release_models():
    """The models of DIR/releases/ID/manifest.json (name -> sha256), for the release whose log is DIR/logs/ID.log."""
    import os

    release = os.path.basename(log)[:-len(".log")]
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(log))), "releases", release, "manifest.json")
    try:
        return {m["name"]: m.get("sha256") for m in json.load(open(path)).get("models", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


MODELS = release_models()


def done(code, **fields):
    print(json.dumps(dict(fields, code=code, release_models=MODELS)))
    sys.exit(code)


while True:
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/v2/health/ready", headers=HEADERS), timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if crashes() >= 2:
        done(CRASHING, ready=False, error="the server keeps crashing on start; its log ends: %s" % log_tail())
    if time.time() > deadline:
        done(NOT_READY, ready=False, error="not ready within %.0f s; its log ends: %s" % (timeout, log_tail()))
    time.sleep(0.3)


for name in MODELS:
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/v2/models/%s/ready" % name, headers=HEADERS),
                                    timeout=5):
            pass
    except urllib.error.HTTPError as exc:
        why = exc.read()[:300].decode(errors="replace")
        try:
            why = json.loads(why).get("error", why)
        except ValueError:
            pass
        done(MODEL_MISSING, ready=False, error="the server runs without its model %s (HTTP %s: %s); its log ends: %s" % (
            name, exc.code, why, log_tail()))
    except Exception as exc:
        done(MODEL_MISSING, ready=False, error="model %s: %s" % (name, exc))


def flat(x):
    return [v for item in x for v in flat(item)] if isinstance(x, list) else [x]


if reference_path == "-":  # readiness only (the release we rolled back to)
    done(0, ready=True)
worst = 0.0
reference = json.load(open(reference_path))
for model in reference["models"]:
    body = {"inputs": [{"name": t["name"], "shape": t["shape"], "datatype": t["datatype"], "data": t["data"]}
                       for t in model["inputs"]]}
    req = urllib.request.Request(base + "/v2/models/%s/infer" % model["name"], data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **HEADERS})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            got = {o["name"]: o for o in json.load(r)["outputs"]}
    except urllib.error.HTTPError as exc:
        done(SMOKE_FAILED, ready=True, error="%s: HTTP %s %s" % (model["name"], exc.code, exc.read()[:200].decode(errors="replace")))
    except Exception as exc:
        done(SMOKE_FAILED, ready=True, error="%s: %s" % (model["name"], exc))
    for want in model["outputs"]:
        out = got.get(want["name"])
        if out is None or out["shape"] != want["shape"]:
            done(SMOKE_FAILED, ready=True, error="%s: output %s has shape %s, expected %s" % (
                model["name"], want["name"], out and out["shape"], want["shape"]))
        for a, b in zip(flat(out["data"]), want["data"]):
            diff = abs(a - b)
            worst = max(worst, diff)
            if diff > reference["atol"] + reference["rtol"] * abs(b):
                done(SMOKE_FAILED, ready=True, max_abs_diff=diff, error="%s: output %s differs from the reference by %.3g" % (
                    model["name"], want["name"], diff))
done(0, ready=True, max_abs_diff=worst, models=[m["name"] for m in reference["models"]])
