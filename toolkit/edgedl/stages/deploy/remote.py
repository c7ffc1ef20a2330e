"""The shell the device runs (POSIX sh + the device's python3 standard library only).

Layout on the device, under the deploy's ``--remote-dir`` (relative paths are relative to the login's home)::

    staging/ID/        a copy in progress; never served (an interrupted copy leaves only this)
    releases/ID/       an installed release: the bundle + venv/ (+ .installed, or .failed after a failed start)
    current -> releases/ID      switched atomically: ln -sfn to a temporary name, then mv -T over `current`
    service.env        EDGEDL_HOST / EDGEDL_PORT of the service
    run/edgedl.pid     the supervisor's pid (= its process group) when running without systemd
    logs/ID.log        each release's server log
    history            one line per event: TIME ID EVENT
"""

# Every script starts with: cd into the deploy dir (created), then the shared functions.
PRELUDE = r'''
set -u
R=$1; shift
mkdir -p "$R" && cd "$R" || { echo "cannot create or enter $R" >&2; exit 20; }
log_event() { printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >> history; }
pid_alive() { [ -f run/edgedl.pid ] && kill -0 "$(cat run/edgedl.pid)" 2>/dev/null; }
stop_service() {
    if [ -f run/edgedl.pid ]; then
        pid=$(cat run/edgedl.pid)
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
        kill -KILL -- "-$pid" 2>/dev/null
        rm -f run/edgedl.pid
    fi
}
start_service() {  # $1 = release id; current must point at it
    mkdir -p run logs
    echo "--- $(date -u +%Y-%m-%dT%H:%M:%SZ) starting release $1" >> "logs/$1.log"
    ( set -a; . ./service.env; set +a; exec setsid current/supervise.sh ) >> "logs/$1.log" 2>&1 < /dev/null &
    echo $! > run/edgedl.pid
}
switch_current() {  # atomic: a reader sees the old link or the new one, never none
    ln -sfn "releases/$1" current.tmp && mv -T current.tmp current
}
current_id() { basename "$(readlink current 2>/dev/null)" 2>/dev/null; }
'''

PROBE = PRELUDE + r'''
PY=$1; REL=${2:-}
echo "arch=$(uname -m)"
if command -v "$PY" >/dev/null 2>&1; then
    echo "python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 && echo "venv=yes" || echo "venv=no"
else
    echo "python="
fi
echo "disk_kb=$(df -Pk . | awk 'NR==2 {print $4}')"
echo "mem_available_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)"
echo "mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
[ -d /run/systemd/system ] && echo "systemd=yes" || echo "systemd=no"
command -v rsync >/dev/null 2>&1 && echo "rsync=yes" || echo "rsync=no"
echo "current=$(current_id)"
echo "running=$(pid_alive && echo yes || echo no)"
echo "dir=$(pwd -P)"
'''

# Verify the copied bundle's hashes with the device's own python (stdlib) before anything from it is executed.
VERIFY_PY = r'''
import hashlib, json, os, sys
d = sys.argv[1]
try:
    files = json.load(open(os.path.join(d, "manifest.json")))["files"]
except (OSError, ValueError, KeyError) as exc:
    print("bundle manifest unreadable: %s" % exc); sys.exit(3)
for name in sorted(files):
    path = os.path.join(d, name)
    if ".." in name.split("/") or name.startswith("/"):
        print("unsafe path %s" % name); sys.exit(3)
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        print("missing %s" % name); sys.exit(3)
    if h.hexdigest() != files[name]:
        print("sha256 mismatch %s" % name); sys.exit(3)
'''

INSTALL = PRELUDE + r'''
ID=$1; PY=$2; VERIFY=$3
S="staging/$ID"; D="releases/$ID"
[ -d "$S" ] || { echo "staging copy $S missing" >&2; exit 21; }
"$PY" -c "$VERIFY" "$S" >&2 || exit 22
mkdir -p releases
rm -rf "$D" && mv "$S" "$D" || exit 23
"$PY" -m venv "$D/venv" >&2 || { echo "creating a venv with $PY failed (install python3-venv)" >&2; exit 24; }
# --no-compile: Python writes the bytecode on first start instead; that cut the install from 9.5 s to 3.7 s here
"$D/venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check --no-index --find-links "$D/wheels" \
    -r "$D/requirements.txt" < /dev/null >&2 || { echo "installing the wheelhouse into $D/venv failed" >&2; exit 25; }
touch "$D/.installed"
log_event "$ID" installed
'''

# KEYMODE "set": the API key arrives on stdin (never on a command line); "keep": keep the one service.env has.
ACTIVATE = PRELUDE + r'''
ID=$1; HOST=$2; PORT=$3; KEYMODE=${4:-keep}
[ -f "releases/$ID/.installed" ] || { echo "release $ID is not installed" >&2; exit 26; }
umask 077
if [ "$KEYMODE" = set ]; then KEYLINE=$(cat); else KEYLINE=$(grep '^EDGEDL_API_KEY=' service.env 2>/dev/null); fi
{ printf 'EDGEDL_HOST=%s\nEDGEDL_PORT=%s\n' "$HOST" "$PORT"; [ -n "$KEYLINE" ] && printf '%s\n' "$KEYLINE"; } > service.env.tmp
mv service.env.tmp service.env
stop_service
switch_current "$ID"
start_service "$ID"
log_event "$ID" activated
'''

# Poll /v2/health/ready from the device itself (works whatever address the server binds). Gives up early when
# the release's server has already crashed twice since it was started (a broken bundle, not a slow start).
WAIT_READY = PRELUDE + r'''
PY=$1; TIMEOUT=$2; ID=${3:-$(current_id)}
EDGEDL_API_KEY=
. ./service.env
export EDGEDL_API_KEY
ADDR=$EDGEDL_HOST; [ "$ADDR" = "0.0.0.0" ] && ADDR=127.0.0.1; [ "$ADDR" = "::" ] && ADDR=::1
case $ADDR in *:*) ADDR="[$ADDR]";; esac
"$PY" - "http://$ADDR:$EDGEDL_PORT/v2/health/ready" "$TIMEOUT" "logs/$ID.log" << 'EOF'
import sys, time, urllib.request
url, deadline, log = sys.argv[1], time.time() + float(sys.argv[2]), sys.argv[3]
def crashes():
    try:
        text = open(log, errors="replace").read()
    except OSError:
        return 0
    return text[text.rfind("--- "):].count("edgedl supervisor: server exited")
import os
key = os.environ.get("EDGEDL_API_KEY")
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + key} if key else {})
while time.time() < deadline:
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            if r.status == 200:
                print("ready"); sys.exit(0)
    except Exception:
        pass
    if crashes() >= 2:
        print("crashed"); sys.exit(2)
    time.sleep(0.3)
print("not ready"); sys.exit(1)
EOF
'''

FAIL_AND_RESTORE = PRELUDE + r'''
ID=$1; PREV=${2:-}
stop_service
touch "releases/$ID/.failed"
log_event "$ID" failed
if [ -n "$PREV" ] && [ -f "releases/$PREV/.installed" ]; then
    switch_current "$PREV"
    start_service "$PREV"
    log_event "$PREV" rolled-back-to
else
    rm -f current
fi
'''

STOP = PRELUDE + r'''
stop_service
log_event "$(current_id)" stopped
'''

STATUS = PRELUDE + r'''
PY=$1
echo "current=$(current_id)"
echo "running=$(pid_alive && echo yes || echo no)"
[ -f run/edgedl.pid ] && echo "pid=$(cat run/edgedl.pid)"
[ -f service.env ] && sed -e 's/^EDGEDL_API_KEY=.*/EDGEDL_API_KEY=(set)/' -e 's/^/service./' service.env
for d in releases/*/; do
    [ -d "$d" ] || continue
    id=$(basename "$d"); state=incomplete
    [ -f "$d.installed" ] && state=installed
    [ -f "$d.failed" ] && state=failed
    echo "release=$id $state $(du -sk "$d" | cut -f1)"
done
for d in staging/*/; do [ -d "$d" ] && echo "staging=$(basename "$d")"; done
tail -n 20 history 2>/dev/null | sed 's/^/history=/'
'''

LOGS = PRELUDE + r'''
ID=${1:-}; N=$2
[ -n "$ID" ] || ID=$(current_id)
[ -n "$ID" ] || { echo "nothing deployed in $R" >&2; exit 27; }
[ -f "logs/$ID.log" ] || { echo "no log for release $ID" >&2; exit 28; }
tail -n "$N" "logs/$ID.log"
'''

PRUNE = PRELUDE + r'''
KEEP=$1
CUR=$(current_id)
ls -1d releases/*/ 2>/dev/null | sed 's#releases/##; s#/$##' | sort -r | tail -n +"$((KEEP + 1))" | while read -r id; do
    [ "$id" = "$CUR" ] || { rm -rf "releases/$id"; echo "pruned=$id"; }
done
rm -rf staging
'''
