"""One device's state for `edgedl fleet status`, as one JSON line (device python3, standard library only).
Usage: status.py DEPLOY_DIR"""
import json
import os
import sys
import time
import urllib.request

d = os.path.expanduser(sys.argv[1])
out = {"dir": d, "current": None, "running": False, "ready": False, "uptime_s": None, "models": {},
       "device_uptime_s": None, "arch": os.uname().machine}
try:
    out["device_uptime_s"] = float(open("/proc/uptime").read().split()[0])
except OSError:
    pass
try:
    out["current"] = os.path.basename(os.readlink(os.path.join(d, "current")))
except OSError:
    pass
pid_file = os.path.join(d, "run", "edgedl.pid")
mode, unit = "process", None
try:  # run/service: "process", or "systemd UNIT" as device.sh (edgedl-device.sh) chose them
    mode, _, unit = (open(os.path.join(d, "run", "service")).read().strip() or "process").partition(" ")
except OSError:
    pass
out["service"] = mode
if mode == "systemd":
    import subprocess

    out["unit"] = unit
    try:
        show = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic", unit],
                              capture_output=True, text=True, timeout=10).stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        out["running"] = props.get("ActiveState") == "active"
        since = int(props.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
        if out["running"] and since and out["device_uptime_s"] is not None:
            out["uptime_s"] = round(out["device_uptime_s"] - since, 1)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
else:
    try:
        os.kill(int(open(pid_file).read().strip()), 0)
        out["running"] = True
        out["uptime_s"] = round(time.time() - os.stat(pid_file).st_mtime, 1)  # the pid file is written at start
    except (OSError, ValueError):
        pass
try:
    manifest = json.load(open(os.path.join(d, "current", "manifest.json")))
    out["models"] = {m["name"]: m.get("sha256") for m in manifest.get("models", [])}
except (OSError, ValueError):
    pass
env = {}
try:  # KEY='VALUE' lines (device.sh writes them quoted for sh, which sources the file): shlex reads them as sh does
    import shlex

    for line in open(os.path.join(d, "service.env")):
        words = shlex.split(line, comments=True)
        if len(words) == 1 and "=" in words[0]:
            key, _, value = words[0].partition("=")
            env[key] = value
except (OSError, ValueError):
    pass
host = env.get("EDGEDL_HOST", "127.0.0.1")
host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
out["port"] = env.get("EDGEDL_PORT")
if out["running"] and out["port"]:
    try:
        key = env.get("EDGEDL_API_KEY", "")
        headers = {"Authorization": "Bearer " + key} if key else {}
        url = "http://%s:%s/v2/health/ready" % (host, out["port"])
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=3) as r:
            out["ready"] = r.status == 200
    except Exception:
        pass
print(json.dumps(out))
