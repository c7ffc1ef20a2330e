#!/bin/sh
# The device side of every edgedl release - `edgedl deploy` and `edgedl bench --remote` send this file over SSH
# (stages/device/device.py: one Python method per command), the edgedl_release Ansible role runs it as
# files/edgedl-device.sh (a link to this file): one implementation of the layout and the checks below.
# POSIX sh and the device's python3 standard library only.
#
# Usage: device.sh DIR COMMAND ARGS...   (DIR is created; relative to the login's home)
# Commands: facts check lock unlock install ensure-env bench activate wait-ready restore stop status logs discard prune
#
# Layout under DIR:
#   staging/ID/        a copy in progress; never served (an interrupted copy leaves only this)
#   releases/ID/       an installed release: the bundle + venv/ (+ .installed, or .failed after a failed start)
#   current -> releases/ID      switched atomically: ln -sfn to a temporary name, then mv -T over `current`
#   service.env        EDGEDL_HOST / EDGEDL_PORT (/ EDGEDL_API_KEY) of the service, mode 600; sourced by sh and
#                      read by systemd, so every value is checked (check_value) and written single-quoted
#   run/service        how the server is kept running: "systemd UNIT" (see below) or "process"
#   run/edgedl.pid     the supervisor's pid (= its process group) when it runs as a supervised process
#   logs/ID.log        each release's server log (both ways)
#   history            one line per event: TIME ID EVENT
#   run/deploy.lock/   held by the deploy or rollout working on DIR (owner: token, who)
#
# With systemd (the device runs it, and the login is root or has passwordless sudo) the server is the unit
# /etc/systemd/system/edgedl[-NAME].service (NAME: DIR's base name unless it is "edgedl"), enabled so it comes
# back after a reboot, restarted by systemd when it fails. Otherwise current/supervise.sh keeps it running.
set -u

# Exit codes: the one table of them. stages/device/protocol.py (DeviceExit) mirrors it, device_health.py returns
# the wait-ready ones, and tests/test_device_protocol.py checks that the three agree.
E_USAGE=2             # an unknown command or argument
E_NOT_READY=10        # wait-ready: /v2/health/ready did not answer within the timeout (or nothing was started)
E_CRASHING=11         # wait-ready: the server keeps crashing on start
E_SMOKE_FAILED=12     # wait-ready: the smoke inference failed or differs from the reference outputs
E_MODEL_MISSING=13    # wait-ready: the server runs without a model of the release
E_DIR=20              # the deploy directory cannot be created or entered
E_MISSING_COPY=21     # install / ensure-env: the copy to install is not there
E_VERIFY=22           # install: the copy does not match its manifest
E_WRITE=23            # install: a file could not be written or moved
E_VENV=24             # install / ensure-env: creating the venv failed
E_PIP=25              # install / ensure-env: installing the wheelhouse failed
E_NOT_INSTALLED=26    # activate: the release (or its trusted key) is not installed
E_NOTHING_DEPLOYED=27 # logs: no release is current
E_NO_LOG=28           # logs: the release has no log
E_UNIT_TAKEN=29       # activate: the systemd unit already runs another directory
E_NO_SYSTEMD=30       # activate / check: systemd was asked for and cannot be used
E_START=31            # activate: starting the service failed
E_LOCKED=32           # lock: another deploy holds the directory
E_VALUE=33            # a value that is not what it must be (host, port, key, release id)
E_UNSIGNED=34         # install: the signature does not verify with the key the directory trusts
E_ARCH=35             # check: the device's architecture is not the bundle's
E_NO_PYTHON=36        # check: the device's Python was not found
E_PYTHON=37           # check: the device's Python is not the bundle's
E_NO_VENV=38          # check: the device's Python cannot create venvs
E_DISK=39             # check: not enough free disk for the release
E_MEMORY=40           # check: not enough memory available for the server

R=$1; CMD=$2; shift 2
mkdir -p -- "$R" && cd -- "$R" || { echo "cannot create or enter $R" >&2; exit $E_DIR; }
HERE_DIR=$(pwd -P)
UNIT_DIR=/etc/systemd/system

# The checks match stages/device/values.py, which refuses the same values on the laptop before anything connects.
check_value() {  # KIND VALUE: host | port | key | id; exit E_VALUE naming it unless VALUE is one
    case $1 in
    host) case $2 in ""|-*|*[!A-Za-z0-9.:-]*) false;; esac ;;
    id) case $2 in ""|.*|*[!A-Za-z0-9._-]*) false;; esac ;;  # a release id: a file name
    port) case $2 in ""|*[!0-9]*|??????*) false;; *) [ "$2" -ge 1 ] && [ "$2" -le 65535 ];; esac ;;
    key) case $2 in ????????????????*) case $2 in *[!A-Za-z0-9._~+/=-]*) false;; esac;; *) false;; esac ;;
    esac || { echo "refusing the $1 value given: it is not a valid $1" >&2; exit $E_VALUE; }
}
sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }  # one sh word, quoted
env_get() {  # KEY: its value in service.env, unquoted (values are written as KEY='VALUE')
    [ -f service.env ] && sed -n "s/^$1=//p" service.env | tail -n 1 | sed "s/^'\\(.*\\)'\$/\\1/"
}
is_loopback() { case $1 in 127.*|::1|localhost) true;; *) false;; esac; }
log_event() { printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >> history; }
current_id() { basename "$(readlink current 2>/dev/null)" 2>/dev/null; }
switch_current() {  # atomic: a reader sees the old link or the new one, never none
    ln -sfn "releases/$1" current.tmp && mv -T current.tmp current
}
service_mode() { s=$(cat run/service 2>/dev/null) || s=process; echo "${s%% *}"; }  # run/service: process | systemd UNIT
unit_name() {
    b=$(basename "$HERE_DIR" | tr -c 'A-Za-z0-9_.\n-' '_')
    if [ "$b" = edgedl ]; then echo edgedl.service; else echo "edgedl-$b.service"; fi
}
UNIT=$(unit_name)

# How systemd can be driven here: prints "root" or "sudo"; fails (with the reason on stdout) when it cannot.
systemd_access() {
    [ -d /run/systemd/system ] || { echo "the device does not run systemd"; return 1; }
    command -v systemctl >/dev/null 2>&1 || { echo "systemctl is missing"; return 1; }
    case $HERE_DIR in *[!A-Za-z0-9_./+,@=\ -]*) echo "the deploy directory $HERE_DIR has characters a unit file cannot hold"; return 1;; esac
    if [ "$(id -u)" = 0 ]; then echo root; return 0; fi
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then echo sudo; return 0; fi
    echo "$(id -un) is not root and has no passwordless sudo"; return 1
}
sc() {  # systemctl as root (directly or through sudo -n)
    if [ "$(id -u)" = 0 ]; then systemctl "$@"; else sudo -n systemctl "$@"; fi
}
as_root_write() {  # stdin -> file $1 as root
    if [ "$(id -u)" = 0 ]; then cat > "$1"; else sudo -n tee "$1" > /dev/null; fi
}
unit_is_ours() { [ ! -e "$UNIT_DIR/$UNIT" ] || grep -qxF "WorkingDirectory=$HERE_DIR" "$UNIT_DIR/$UNIT"; }

# systemd takes WorkingDirectory=, EnvironmentFile= and append: paths whole (spaces included); ExecStart= is quoted.
# systemd_access refuses a directory with any other character a unit file would read specially (% $ \ " newline).
NOFILE=4096  # open files for the server: its connection limit (1024 by default) plus models, logs and libraries
write_unit() {  # $1 = release id: its log file is where the server's output goes
    user_line=
    [ "$(id -u)" = 0 ] || user_line="User=$(id -un)"
    as_root_write "$UNIT_DIR/$UNIT" << EOF
# Written by edgedl deploy for $HERE_DIR (release $1); rewritten at every deploy and rollback.
[Unit]
Description=edgedl model server (release $1)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
$user_line
WorkingDirectory=$HERE_DIR
EnvironmentFile=$HERE_DIR/service.env
ExecStart="$HERE_DIR/current/start.sh"
ExecStopPost=/bin/sh -c '[ "\$\$SERVICE_RESULT" = success ] || echo "edgedl systemd: server exited (\$\$SERVICE_RESULT, \$\$EXIT_CODE \$\$EXIT_STATUS); systemd restarts it" >> logs/$1.log'
StandardOutput=append:$HERE_DIR/logs/$1.log
StandardError=inherit
Restart=on-failure
RestartSec=2
TimeoutStopSec=60
LimitNOFILE=$NOFILE
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
EOF
}

pid_alive() { [ -f run/edgedl.pid ] && kill -0 "$(cat run/edgedl.pid)" 2>/dev/null; }
running() {
    if [ "$(service_mode)" = systemd ]; then systemctl is-active --quiet "$UNIT" 2>/dev/null; else pid_alive; fi
}
main_pid() {
    if [ "$(service_mode)" = systemd ]; then
        p=$(systemctl show -p MainPID --value "$UNIT" 2>/dev/null); [ "${p:-0}" != 0 ] && echo "$p"
    elif pid_alive; then cat run/edgedl.pid; fi
}
stop_service() {  # whatever runs: a supervised process (pid file) and/or our unit
    if [ -f run/edgedl.pid ]; then
        pid=$(cat run/edgedl.pid)
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
        kill -KILL -- "-$pid" 2>/dev/null
        rm -f run/edgedl.pid
    fi
    if [ "$(service_mode)" = systemd ] && [ -e "$UNIT_DIR/$UNIT" ]; then
        sc stop "$UNIT" 2>/dev/null
    fi
}
disable_unit() {  # stop using systemd in this directory: the unit goes away
    if [ -e "$UNIT_DIR/$UNIT" ] && unit_is_ours; then
        sc disable --now --quiet "$UNIT" 2>/dev/null
        if [ "$(id -u)" = 0 ]; then rm -f "$UNIT_DIR/$UNIT"; else sudo -n rm -f "$UNIT_DIR/$UNIT"; fi
        sc daemon-reload
    fi
}
decide_service() {  # $1 = auto | systemd | process | keep -> NEW_MODE; refuses (E_UNIT_TAKEN / E_NO_SYSTEMD) before anything changes
    want=$1; NEW_MODE=process
    if [ "$want" = keep ]; then
        if [ -f run/service ]; then NEW_MODE=$(service_mode); return 0; fi
        want=auto
    fi
    if [ "$want" != process ]; then
        if why=$(systemd_access); then
            unit_is_ours || { echo "$UNIT_DIR/$UNIT already runs another directory; deploy to another --remote-dir or pass --service process" >&2; exit $E_UNIT_TAKEN; }
            NEW_MODE=systemd
        elif [ "$want" = systemd ]; then
            echo "--service systemd: $why; pass --service auto or process" >&2; exit $E_NO_SYSTEMD
        fi
    fi
}
apply_service() {  # after the old server stopped: leave systemd behind if NEW_MODE is not systemd
    [ "$(service_mode)" = systemd ] && [ "$NEW_MODE" != systemd ] && disable_unit
    if [ "$NEW_MODE" = systemd ]; then m="systemd $UNIT"; else m=process; fi
    mkdir -p run && echo "$m" > run/service
}
start_service() {  # $1 = release id; current must point at it
    mkdir -p run logs
    echo "--- $(date -u +%Y-%m-%dT%H:%M:%SZ) starting release $1 ($(service_mode))" >> "logs/$1.log"
    if [ "$(service_mode)" = systemd ]; then
        write_unit "$1" && sc daemon-reload && sc enable --quiet "$UNIT" && sc restart "$UNIT" \
            || { echo "starting $UNIT failed" >&2; return $E_START; }
        return 0
    fi
    # HUP ignored: when this runs on a pty (Ansible's script module uses one) the session's end must not kill
    # the server before setsid has moved it into its own session
    ( trap '' HUP; ulimit -n "$NOFILE" 2>/dev/null; set -a; . ./service.env; set +a; exec setsid current/supervise.sh ) >> "logs/$1.log" 2>&1 < /dev/null &
    echo $! > run/edgedl.pid
}

# A bundle's manifest.json.sig must be an OpenSSH signature (namespace edgedl-bundle) of its manifest.json by one
# of the ed25519 keys in KEYFILE - the check runtime/manifest.py's verify_signature makes; done here with the
# device's own ssh-keygen because nothing from the bundle may be trusted before it passed.
verify_signature() {  # BUNDLE_DIR KEYFILE; prints why not
    [ -f "$1/manifest.json.sig" ] || { echo "the bundle is not signed (no manifest.json.sig) but $2 is trusted here"; return 1; }
    command -v ssh-keygen >/dev/null 2>&1 || { echo "ssh-keygen is missing: install openssh-client to check signatures"; return 1; }
    allowed=$(mktemp) || return 1
    awk '$1 == "ssh-ed25519" || $1 == "sk-ssh-ed25519@openssh.com" { print "edgedl namespaces=\"edgedl-bundle\" " $1 " " $2 }' \
        "$2" > "$allowed" 2>/dev/null
    ssh-keygen -Y verify -f "$allowed" -I edgedl -n edgedl-bundle -s "$1/manifest.json.sig" < "$1/manifest.json" > /dev/null 2>&1
    ok=$?; rm -f "$allowed"
    [ $ok = 0 ] || echo "the bundle's signature does not verify with $2 (changed after signing, or signed by another key)"
    return $ok
}

install_venv() {  # DIR PY: DIR/venv from DIR/wheels and DIR/requirements.txt, offline (a release's, or a bench runtime's)
    "$2" -m venv "$1/venv" >&2 || { echo "creating a venv with $2 failed (install python3-venv)" >&2; exit $E_VENV; }
    # --no-compile: Python writes the bytecode on first start instead; that cut the install from 9.5 s to 3.7 s here
    "$1/venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check --no-index \
        --find-links "$1/wheels" -r "$1/requirements.txt" < /dev/null >&2 \
        || { echo "installing the wheelhouse into $1/venv failed" >&2; exit $E_PIP; }
}
run_py() {  # PY PROGRAM ARGS...: PROGRAM is a file on the device (the Ansible role copies it) or the program's text
    py=$1; prog=$2; shift 2
    if [ -f "$prog" ]; then exec "$py" "$prog" "$@"; else exec "$py" -c "$prog" "$@"; fi
}

# Check every file of a copied bundle against its manifest.json (sha256) with the device's python.
VERIFY_PY='
import hashlib, json, os, sys
d = sys.argv[1]
try:
    files = json.load(open(os.path.join(d, "manifest.json")))["files"]
except (OSError, ValueError, KeyError) as exc:
    print("bundle manifest unreadable: %s" % exc); sys.exit(3)
for name in sorted(files):
    if ".." in name.split("/") or name.startswith("/"):
        print("unsafe path %s" % name); sys.exit(3)
    h = hashlib.sha256()
    try:
        with open(os.path.join(d, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        print("missing %s" % name); sys.exit(3)
    if h.hexdigest() != files[name]:
        print("sha256 mismatch %s" % name); sys.exit(3)
'

probe_facts() {  # PY: what facts and check print (the values are plain tokens, so printf is enough)
    PY=$1; py=; venv=no
    if command -v "$PY" >/dev/null 2>&1; then
        py=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
        "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 && venv=yes
    fi
    installed=; installed_ids=
    for d in releases/*/; do
        [ -f "$d.installed" ] || continue
        installed="$installed\"$(basename "$d")\","; installed_ids="$installed_ids $(basename "$d")"
    done
    host=$(env_get EDGEDL_HOST); port=$(env_get EDGEDL_PORT)
    disk_kb=$(df -Pk . | awk 'NR==2 {print $4}')
    mem_av=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)
    mem_total=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)
    sd=no; sd_why=$(systemd_access) && sd=yes
    [ -d /run/systemd/system ] && has_sd=yes || has_sd=no
    command -v rsync >/dev/null 2>&1 && rsync=yes || rsync=no
    D_ARCH=$(uname -m)
}
print_facts() {  # one JSON object on stdout
    printf '{"arch": "%s", "python": "%s", "venv": "%s", "disk_free_kb": %s, "disk_free_mb": %s, ' \
        "$D_ARCH" "$py" "$venv" "${disk_kb:-0}" "$(( ${disk_kb:-0} / 1024 ))"
    printf '"mem_available_kb": %s, "mem_total_kb": %s, "systemd": "%s", "systemd_usable": "%s", "systemd_why": "%s", ' \
        "${mem_av:-null}" "${mem_total:-null}" "$has_sd" "$sd" "$sd_why"
    printf '"service": "%s", "unit": "%s", "rsync": "%s", "current": "%s", "running": %s, ' \
        "$(service_mode)" "$UNIT" "$rsync" "$(current_id)" "$(running && echo true || echo false)"
    printf '"service_host": "%s", "service_port": "%s", "installed": [%s], "dir": "%s"}\n' \
        "$host" "$port" "${installed%,}" "$HERE_DIR"
}

case $CMD in
facts)  # PY: the device, as one JSON object
    probe_facts "$1"; print_facts
    ;;
check)  # KEY=VALUE...: the facts, then whether a bundle can run here - the one compatibility check, for `edgedl
    # deploy` and the Ansible role alike. Keys: py label bundle profile arch python need_disk_mb min_memory_mb
    # memory_mb release service. Prints the facts; refuses with one line and its exit code; warnings on stderr.
    py_cmd=python3 label=$(hostname 2>/dev/null || echo device) bundle="the bundle" profile= arch= python= need=0
    min_mem=0 budget=0 release= service=auto
    for a in "$@"; do
        case $a in
        py=*) py_cmd=${a#py=} ;; label=*) label=${a#label=} ;; bundle=*) bundle=${a#bundle=} ;;
        profile=*) profile=${a#profile=} ;; arch=*) arch=${a#arch=} ;; python=*) python=${a#python=} ;;
        need_disk_mb=*) need=${a#need_disk_mb=} ;; min_memory_mb=*) min_mem=${a#min_memory_mb=} ;;
        memory_mb=*) budget=${a#memory_mb=} ;; release=*) release=${a#release=} ;; service=*) service=${a#service=} ;;
        *) echo "check: unknown requirement $a" >&2; exit $E_USAGE ;;
        esac
    done
    for n in "$need" "$min_mem" "$budget"; do case $n in ""|*[!0-9]*) echo "check: $n is not a number of MB" >&2; exit $E_USAGE;; esac; done
    probe_facts "$py_cmd"; print_facts
    refuse() { echo "$2" >&2; exit "$1"; }
    [ "$D_ARCH" = "$arch" ] || refuse $E_ARCH "$label is $D_ARCH but $bundle is for $profile ($arch)"
    [ -n "$py" ] || refuse $E_NO_PYTHON "$py_cmd was not found on $label; install Python $python there"
    [ "$py" = "$python" ] || refuse $E_PYTHON "$label has Python $py but $bundle's wheelhouse is for Python $python"
    [ "$venv" = yes ] || refuse $E_NO_VENV "$py_cmd on $label cannot create virtual environments; install python3-venv there"
    free_mb=$(( ${disk_kb:-0} / 1024 ))
    case " $installed_ids " in *" $release "*) ;; *)
        [ "$free_mb" -ge "$need" ] || refuse $E_DISK "$label has $free_mb MB free in $HERE_DIR but the release needs ~$need MB (the bundle, its installed runtime and the profile's reserve); free space or prune old releases"
    esac
    if [ -n "$mem_av" ] && [ $(( mem_av / 1024 )) -lt "$min_mem" ]; then
        refuse $E_MEMORY "$label has only $(( mem_av / 1024 )) MB of memory available; the server needs ~$min_mem MB - stop other services first"
    fi
    if [ -n "$mem_total" ] && [ $(( mem_total / 1024 )) -lt "$budget" ]; then
        echo "warning: $label has $(( mem_total / 1024 )) MB of memory, less than profile $profile's budget of $budget MB" >&2
    fi
    if [ "$sd" != yes ]; then
        [ "$service" != systemd ] || refuse $E_NO_SYSTEMD "--service systemd: on $label $sd_why; pass --service auto (a supervised process) or deploy as root / give the login passwordless sudo"
        [ "$service" != auto ] || [ "$has_sd" != yes ] || echo "warning: $label runs systemd but $sd_why, so the server runs as a supervised process (pid file + log) that does not come back after a reboot; give the login passwordless sudo (or deploy as root) to get a systemd unit, or pass --service process to say you mean it" >&2
    fi
    true
    ;;
install)  # ID PY [KEY]: staging/ID -> verified against its manifest -> releases/ID with a venv from its wheelhouse
    # KEY (trust/NAME.pub): an ed25519 public key arrives on stdin and is kept as DIR/KEY; the bundle must be
    # signed by it. Without KEY, by the key the service trusts now (EDGEDL_VERIFY_KEY), if any: once a directory
    # trusts a key, it takes only signed bundles.
    ID=$1; PY=$2; KEY=${3:-}
    check_value id "$ID"
    S="staging/$ID"; D="releases/$ID"
    [ -d "$S" ] || { echo "staging copy $S missing" >&2; exit $E_MISSING_COPY; }
    if [ -n "$KEY" ]; then
        case $KEY in trust/*.pub) check_value id "${KEY#trust/}";; *) check_value id "";; esac
        mkdir -p trust && cat > "$KEY.tmp" && mv "$KEY.tmp" "$KEY" || exit $E_WRITE
        KEY="$HERE_DIR/$KEY"
    else
        KEY=$(env_get EDGEDL_VERIFY_KEY)
    fi
    if [ -n "$KEY" ]; then
        why=$(verify_signature "$S" "$KEY") || { echo "$why; refusing release $ID" >&2; exit $E_UNSIGNED; }
    fi
    "$PY" -c "$VERIFY_PY" "$S" >&2 || exit $E_VERIFY
    mkdir -p releases
    if [ -f "$D/.installed" ] && cmp -s "$S/manifest.json" "$D/manifest.json"; then
        rm -rf "$S"; rmdir staging 2>/dev/null  # the same release again (its id is its manifest's hash): keep its venv
        log_event "$ID" installed
        exit 0
    fi
    rm -rf "$D" && mv "$S" "$D" || exit $E_WRITE
    install_venv "$D" "$PY"
    touch "$D/.installed"
    log_event "$ID" installed
    ;;
ensure-env)  # ENV PY: a runtime venv in DIR/ENV from the wheelhouse copied to ENV/wheels (+ ENV/requirements.txt),
    # installed once and kept: `edgedl bench --remote` runs its worker there. E_MISSING_COPY: copy the wheelhouse first.
    ENV=$1; PY=$2
    check_value id "$ENV"
    [ -f "$ENV/.installed" ] && exit 0
    [ -f "$ENV/requirements.txt" ] || { echo "no wheelhouse in $HERE_DIR/$ENV yet" >&2; exit $E_MISSING_COPY; }
    rm -rf "$ENV/venv"
    install_venv "$ENV" "$PY"
    touch "$ENV/.installed"
    ;;
bench)  # ENV CONFIG: one bench worker measurement (stages/bench/worker.py) in ENV's venv; its JSON result on stdout
    check_value id "$1"
    [ -f "$1/.installed" ] || { echo "the runtime $1 is not installed here" >&2; exit $E_NOT_INSTALLED; }
    exec "$1/venv/bin/python" -m edgedl.stages.bench.worker "$2" < /dev/null
    ;;
activate)  # ID HOST PORT [AUTH [SERVICE [KEY]]]: stop the running release, switch current, start this one
    # AUTH: the API key in service.env - set: the key arrives on stdin (never on a command line); keep: as it is;
    # auto: as it is, and one generated here (printed once as api_key_generated=) when there is none and HOST is
    # beyond loopback; none: removed (the server then takes requests from anyone who can reach it).
    # SERVICE auto | systemd | process | keep (keep: how the directory ran so far; auto the first time)
    # KEY: trust/NAME.pub (kept by install) becomes EDGEDL_VERIFY_KEY, which the server checks signatures with
    ID=$1; HOST=$2; PORT=$3; AUTH=${4:-keep}; SERVICE=${5:-keep}; TRUST=${6:-}
    VERIFY=$(env_get EDGEDL_VERIFY_KEY)
    if [ -n "$TRUST" ]; then
        case $TRUST in trust/*.pub) check_value id "${TRUST#trust/}";; *) check_value id "";; esac
        [ -f "$TRUST" ] || { echo "$TRUST is missing: install the release with its key first" >&2; exit $E_NOT_INSTALLED; }
        VERIFY="$HERE_DIR/$TRUST"
    fi
    check_value id "$ID"; check_value host "$HOST"; check_value port "$PORT"
    [ -f "releases/$ID/.installed" ] || { echo "release $ID is not installed" >&2; exit $E_NOT_INSTALLED; }
    KEY=$(env_get EDGEDL_API_KEY); GENERATED=
    case $AUTH in
    set) KEY=$(cat); check_value key "$KEY" ;;
    keep) ;;
    auto) if [ -z "$KEY" ] && ! is_loopback "$HOST"; then
              KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n') && [ ${#KEY} = 64 ] \
                  || { echo "cannot read /dev/urandom to generate an API key" >&2; exit $E_VALUE; }
              GENERATED=$KEY
          fi ;;
    none) KEY= ;;
    *) echo "unknown AUTH $AUTH" >&2; exit $E_USAGE ;;
    esac
    decide_service "$SERVICE"
    [ -f service.env ] && cp -p service.env service.env.prev
    # new host/port/key, each single-quoted; every other setting is kept; mode 600
    ( umask 077  # the redirection is inside the subshell, so service.env.tmp is created with this umask
      { printf 'EDGEDL_HOST=%s\nEDGEDL_PORT=%s\n' "$(sq "$HOST")" "$(sq "$PORT")"
        [ -f service.env ] && grep -v -e '^EDGEDL_HOST=' -e '^EDGEDL_PORT=' -e '^EDGEDL_API_KEY=' -e '^EDGEDL_VERIFY_KEY=' service.env
        [ -n "$KEY" ] && printf 'EDGEDL_API_KEY=%s\n' "$(sq "$KEY")"
        [ -n "$VERIFY" ] && printf 'EDGEDL_VERIFY_KEY=%s\n' "$(sq "$VERIFY")"
        true
      } > service.env.tmp
    ) && mv service.env.tmp service.env
    stop_service
    apply_service
    switch_current "$ID"
    rm -f "releases/$ID/.failed"
    start_service "$ID" || exit $E_START
    log_event "$ID" activated
    echo "service=$(service_mode)"
    [ "$(service_mode)" = systemd ] && echo "unit=$UNIT"
    echo "bind=$HOST"
    [ -n "$KEY" ] && echo "auth=key" || echo "auth=none"
    [ -n "$GENERATED" ] && echo "api_key_generated=$GENERATED"
    true
    ;;
wait-ready)  # PY TIMEOUT ID HEALTH [REFERENCE]: device_health.py (HEALTH: its file here, or its text) against the
    # server from the device itself, whatever address it binds: ready, every model of release ID served, and with
    # REFERENCE (a reference-outputs JSON file) a smoke inference that matches it. Exit 0 or E_NOT_READY..E_MODEL_MISSING.
    PY=$1; TIMEOUT=$2; ID=${3:-$(current_id)}; HEALTH=$4; REFERENCE=${5:--}
    [ -f service.env ] || { echo "no service.env in $HERE_DIR: nothing was started here" >&2; exit $E_NOT_READY; }
    ADDR=$(env_get EDGEDL_HOST); PORT=$(env_get EDGEDL_PORT)
    case $ADDR in 0.0.0.0|"") ADDR=127.0.0.1;; ::) ADDR=::1;; esac
    case $ADDR in *:*) ADDR="[$ADDR]";; esac
    EDGEDL_API_KEY=$(env_get EDGEDL_API_KEY) && export EDGEDL_API_KEY  # the health gate's bearer token, if any
    run_py "$PY" "$HEALTH" "http://$ADDR:$PORT" "$REFERENCE" "$TIMEOUT" "$HERE_DIR/logs/$ID.log"
    ;;
restore)  # ID PREV: the new release failed; mark it, go back to PREV (if any) with its service settings
    ID=$1; PREV=${2:-}
    check_value id "$ID"; [ -z "$PREV" ] || check_value id "$PREV"
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
        [ "$(service_mode)" = systemd ] && disable_unit
        rm -f current
        echo "restored="
    fi
    ;;
stop)  # stop the server (and keep it stopped across a reboot)
    stop_service
    [ "$(service_mode)" = systemd ] && [ -e "$UNIT_DIR/$UNIT" ] && sc disable --quiet "$UNIT" 2>/dev/null
    log_event "$(current_id)" stopped
    ;;
status)  # [show-key]: key=value lines for `edgedl deploy status` and `edgedl fleet status`
    echo "dir=$HERE_DIR"
    echo "arch=$(uname -m)"
    boot=$(cut -d' ' -f1 /proc/uptime 2>/dev/null) && echo "device_uptime_s=$boot"
    echo "current=$(current_id)"
    echo "running=$(running && echo yes || echo no)"
    if pid=$(main_pid) && [ -n "$pid" ]; then
        echo "pid=$pid"
        # how long the server (its supervisor) has run: /proc/PID/stat's start time (field 22; the command name
        # before it, in parentheses, may hold spaces) in clock ticks since boot
        started=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f20)
        [ -n "$started" ] && [ -n "$boot" ] && awk -v b="$boot" -v s="$started" -v t="$(getconf CLK_TCK)" \
            'BEGIN { u = b - s / t; printf "uptime_s=%.1f\n", (u < 0 ? 0 : u) }'
    fi
    echo "service=$(service_mode)"
    [ "$(service_mode)" = systemd ] && echo "unit=$UNIT" && echo "enabled=$(systemctl is-enabled "$UNIT" 2>/dev/null)"
    # SHOW_KEY=show-key: the API key itself (edgedl deploy status --show-key); else only that one is set
    [ -f service.env ] && if [ "${1:-}" = show-key ]; then cat service.env; else sed 's/^EDGEDL_API_KEY=.*/EDGEDL_API_KEY=(set)/' service.env; fi \
        | sed -e "s/^\\([A-Za-z_][A-Za-z0-9_]*\\)='\\(.*\\)'\$/\\1=\\2/" -e 's/^/service./'

    for d in releases/*/; do
        [ -d "$d" ] || continue
        id=$(basename "$d"); state=incomplete
        [ -f "$d.installed" ] && state=installed
        [ -f "$d.failed" ] && state=failed
        echo "release=$id $state $(du -sk "$d" | cut -f1)"
    done
    for d in staging/*/; do [ -d "$d" ] && echo "staging=$(basename "$d")"; done
    tail -n 20 history 2>/dev/null | sed 's/^/history=/'
    true
    ;;
logs)  # [ID] N: the last N lines of a release's log (default: the current one)
    ID=${1:-}; N=$2
    [ -n "$ID" ] || ID=$(current_id)
    [ -z "$ID" ] || check_value id "$ID"; check_value port "$N"  # a line count in 1-65535
    [ -n "$ID" ] || { echo "nothing deployed in $R" >&2; exit $E_NOTHING_DEPLOYED; }
    [ -f "logs/$ID.log" ] || { echo "no log for release $ID" >&2; exit $E_NO_LOG; }
    tail -n "$N" "logs/$ID.log"
    ;;
lock)  # TOKEN WHO [break]: take (or, same TOKEN, refresh) this directory's deploy lock. mkdir is atomic. A lock
    # not refreshed for 15 minutes is stale (its deploy died) and taken over; "break" takes over any lock.
    TOKEN=$1; WHO=$2; BREAK=${3:-}
    mkdir -p run
    if ! mkdir run/deploy.lock 2>/dev/null; then
        holder=$(cut -d' ' -f1 run/deploy.lock/owner 2>/dev/null)
        if [ "$holder" != "$TOKEN" ]; then
            age=$(( $(date +%s) - $(stat -c %Y run/deploy.lock/owner 2>/dev/null || stat -c %Y run/deploy.lock) ))
            who=$(cut -d' ' -f2- run/deploy.lock/owner 2>/dev/null || echo '?')
            if [ "$BREAK" != break ] && [ "$age" -lt 900 ]; then
                echo "another deploy to $HERE_DIR is in progress ($who, last active ${age} s ago)" >&2
                exit $E_LOCKED
            fi
            echo "took over the deploy lock of $who (last active ${age} s ago)" >&2
        fi
    fi
    echo "$TOKEN $WHO" > run/deploy.lock/owner.tmp && mv run/deploy.lock/owner.tmp run/deploy.lock/owner
    ;;
discard)  # ID: remove staging/ID, a copy that failed (an interrupted one is removed by the next prune)
    check_value id "$1"
    rm -rf "staging/$1"
    rmdir staging 2>/dev/null
    true
    ;;
unlock)  # TOKEN: release the lock if this token holds it
    [ "$(cut -d' ' -f1 run/deploy.lock/owner 2>/dev/null)" = "$1" ] && rm -rf run/deploy.lock
    rmdir run 2>/dev/null  # a directory the deploy was refused for is left as it was
    true
    ;;
prune)  # KEEP: keep the current release and the KEEP-1 most recently used others; delete the rest and leftover staging
    # copies. Most recently used = latest line in history (installed, activated, rolled back to, failed); release
    # ids are not ordered (fleet ids are hashes), releases history does not know count as the oldest.
    KEEP=$1
    CUR=$(current_id)
    { [ -n "$CUR" ] && echo "$CUR"
      [ -f history ] && awk '{ last[$2] = NR } END { for (id in last) print last[id], id }' history | sort -rn | cut -d' ' -f2
      ls -1d releases/*/ 2>/dev/null | sed 's#releases/##; s#/$##'
    } | awk '!seen[$0]++' | {
        n=0
        while read -r id; do
            [ -n "$id" ] && [ -d "releases/$id" ] || continue
            n=$((n + 1))
            if [ "$n" -gt "$KEEP" ] && [ "$id" != "$CUR" ]; then
                rm -rf "releases/$id" "logs/$id.log"; echo "pruned=$id"
            fi
        done
    }
    rm -rf staging
    ;;
*)
    echo "unknown command $CMD" >&2; exit $E_USAGE ;;
esac
