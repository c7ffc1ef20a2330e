#!/bin/sh
# Device side of an edgedl release, used by the edgedl_release Ansible role (POSIX sh + the device's python3).
# Same layout as `edgedl deploy`, so `edgedl deploy status|logs|rollback` work on fleet devices too:
#   staging/ID/  releases/ID/ (+ venv/, .installed, .failed)  current -> releases/ID  service.env
#   run/edgedl.pid  logs/ID.log  history (TIME ID EVENT)
# Usage: edgedl-device.sh DIR COMMAND ARGS...   (DIR is created; relative to the login's home)
set -u
R=$1; CMD=$2; shift 2
mkdir -p "$R" && cd "$R" || { echo "cannot create or enter $R" >&2; exit 20; }
HERE_DIR=$(pwd -P)

log_event() { printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >> history; }
pid_alive() { [ -f run/edgedl.pid ] && kill -0 "$(cat run/edgedl.pid)" 2>/dev/null; }
current_id() { basename "$(readlink current 2>/dev/null)" 2>/dev/null; }
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
    # HUP ignored: when this runs on a pty (Ansible's script module uses one) the session's end must not kill
    # the server before setsid has moved it into its own session
    ( trap '' HUP; set -a; . ./service.env; set +a; exec setsid current/supervise.sh ) >> "logs/$1.log" 2>&1 < /dev/null &
    echo $! > run/edgedl.pid
}
switch_current() {  # atomic: a reader sees the old link or the new one, never none
    ln -sfn "releases/$1" current.tmp && mv -T current.tmp current
}

case $CMD in
facts)  # PY: one JSON object (the values are plain tokens, so printf is enough)
    PY=$1; py=; venv=no
    if command -v "$PY" >/dev/null 2>&1; then
        py=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
        "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 && venv=yes
    fi
    installed=
    for d in releases/*/; do [ -f "$d.installed" ] && installed="$installed\"$(basename "$d")\","; done
    host=; port=
    [ -f service.env ] && host=$(sed -n 's/^EDGEDL_HOST=//p' service.env) && port=$(sed -n 's/^EDGEDL_PORT=//p' service.env)
    printf '{"arch": "%s", "python": "%s", "venv": "%s", "disk_free_mb": %s, "current": "%s", "running": %s, ' \
        "$(uname -m)" "$py" "$venv" "$(df -Pk . | awk 'NR==2 {print int($4 / 1024)}')" "$(current_id)" \
        "$(pid_alive && echo true || echo false)"
    printf '"service_host": "%s", "service_port": "%s", "installed": [%s], "dir": "%s"}\n' \
        "$host" "$port" "${installed%,}" "$HERE_DIR"
    ;;
install)  # ID PY: staging/ID (already verified against its manifest) -> releases/ID with a venv from its wheelhouse
    ID=$1; PY=$2
    S="staging/$ID"; D="releases/$ID"
    [ -d "$S" ] || { echo "staging copy $S missing" >&2; exit 21; }
    mkdir -p releases
    rm -rf "$D" && mv "$S" "$D" || exit 23
    "$PY" -m venv "$D/venv" >&2 || { echo "creating a venv with $PY failed (install python3-venv)" >&2; exit 24; }
    "$D/venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check --no-index \
        --find-links "$D/wheels" -r "$D/requirements.txt" < /dev/null >&2 \
        || { echo "installing the wheelhouse into $D/venv failed" >&2; exit 25; }
    touch "$D/.installed"
    log_event "$ID" installed
    ;;
activate)  # ID HOST PORT: stop the running release, switch current, start this one
    ID=$1; HOST=$2; PORT=$3
    [ -f "releases/$ID/.installed" ] || { echo "release $ID is not installed" >&2; exit 26; }
    [ -f service.env ] && cp service.env service.env.prev
    # new host/port; every other setting (e.g. EDGEDL_API_KEY from `edgedl deploy --api-key-file`) is kept, mode 600
    ( umask 077  # the redirection is inside the subshell, so service.env.tmp is created with this umask
      { printf 'EDGEDL_HOST=%s\nEDGEDL_PORT=%s\n' "$HOST" "$PORT"
        [ -f service.env ] && grep -v -e '^EDGEDL_HOST=' -e '^EDGEDL_PORT=' service.env || true
      } > service.env.tmp
    ) && mv service.env.tmp service.env
    stop_service
    switch_current "$ID"
    rm -f "releases/$ID/.failed"
    start_service "$ID"
    log_event "$ID" activated
    ;;
restore)  # ID PREV: the new release failed; mark it, go back to PREV (if any) with its service settings
    ID=$1; PREV=${2:-}
    stop_service
    touch "releases/$ID/.failed"
    log_event "$ID" failed
    if [ -n "$PREV" ] && [ -f "releases/$PREV/.installed" ]; then
        [ -f service.env.prev ] && mv service.env.prev service.env
        switch_current "$PREV"
        start_service "$PREV"
        log_event "$PREV" rolled-back-to
        echo "restored=$PREV"
    else
        rm -f current
        echo "restored="
    fi
    ;;
status)  # everything `edgedl fleet status` shows, key=value
    echo "current=$(current_id)"
    echo "running=$(pid_alive && echo yes || echo no)"
    [ -f service.env ] && sed -e 's/^\(EDGEDL_API_KEY=\).*/\1(set)/' -e 's/^/service./' service.env
    if pid_alive; then echo "started=$(date -r run/edgedl.pid +%s)"; fi
    echo "now=$(date +%s)"
    echo "device_uptime=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)"
    echo "arch=$(uname -m)"
    ;;
*)
    echo "unknown command $CMD" >&2; exit 2 ;;
esac
