#!/bin/sh
# Keep the server of this release running when the device has no systemd: restart it when it exits, waiting
# a little longer each time (1, 2, 4 ... 30 s); stop it and exit on SIGTERM/SIGINT. `edgedl deploy` runs this
# under setsid with a pid file and a log.
HERE=$(cd "$(dirname "$0")" && pwd -P)
child=
stop() {
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
    exit 0
}
trap stop TERM INT
delay=1
while :; do
    "$HERE/start.sh" &
    child=$!
    wait "$child"
    code=$?
    child=
    echo "edgedl supervisor: server exited with status $code; restarting in ${delay}s" >&2
    sleep "$delay" &
    wait $!
    [ "$delay" -lt 30 ] && delay=$((delay * 2))
done
