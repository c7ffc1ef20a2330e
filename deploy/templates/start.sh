#!/bin/sh
# Start the edgedl model server from this bundle (one release). Written by `edgedl package`.
# Environment: EDGEDL_HOST (default below), EDGEDL_PORT (default below), EDGEDL_GRPC_PORT (default below; empty: no
# gRPC endpoint), EDGEDL_PYTHON (default: the release venv),
# EDGEDL_API_KEY and EDGEDL_VERIFY_KEY (read by `edgedl serve` itself); EDGEDL_REQUIRE_KEY=1 (the Dockerfile sets
# it, as a container listens on 0.0.0.0) refuses to start without EDGEDL_API_KEY.
set -eu
DEFAULT_HOST=@HOST@
DEFAULT_PORT=@PORT@
DEFAULT_GRPC_PORT=@GRPC_PORT@
LIMITS=@LIMITS@
if [ "${EDGEDL_REQUIRE_KEY:-0}" = 1 ] && [ -z "${EDGEDL_API_KEY:-}" ]; then
    echo "edgedl: this server listens beyond loopback (${EDGEDL_HOST:-$DEFAULT_HOST}) and has no API key; pass -e EDGEDL_API_KEY=KEY (16+ characters), or -e EDGEDL_REQUIRE_KEY=0 to serve without one" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd -P)
PY=${EDGEDL_PYTHON:-$HERE/venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "edgedl: $PY not found; install the runtime first: python3 -m venv $HERE/venv && $HERE/venv/bin/pip install --no-index --find-links $HERE/wheels -r $HERE/requirements.txt" >&2
    exit 2
fi
GRPC_PORT=${EDGEDL_GRPC_PORT-$DEFAULT_GRPC_PORT}
set --
if [ -n "$GRPC_PORT" ]; then
    set -- --grpc-port "$GRPC_PORT"
fi
# the models' sizes, batch axes and value ranges given to `edgedl package` (warm-up at real sizes, batching)
exec "$PY" -m edgedl serve "$HERE" --host "${EDGEDL_HOST:-$DEFAULT_HOST}" --port "${EDGEDL_PORT:-$DEFAULT_PORT}" --limits "$LIMITS" "$@" @SERVE_OPTIONS@
