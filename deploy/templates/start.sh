#!/bin/sh
# Start the edgedl model server from this bundle (one release). Written by `edgedl package`.
# Environment: EDGEDL_HOST (default below), EDGEDL_PORT (default below), EDGEDL_PYTHON (default: the release venv),
# EDGEDL_API_KEY and EDGEDL_VERIFY_KEY (read by `edgedl serve` itself).
set -eu
DEFAULT_HOST=@HOST@
DEFAULT_PORT=@PORT@
HERE=$(cd "$(dirname "$0")" && pwd -P)
PY=${EDGEDL_PYTHON:-$HERE/venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "edgedl: $PY not found; install the runtime first: python3 -m venv $HERE/venv && $HERE/venv/bin/pip install --no-index --find-links $HERE/wheels -r $HERE/requirements.txt" >&2
    exit 2
fi
exec "$PY" -m edgedl serve "$HERE" --host "${EDGEDL_HOST:-$DEFAULT_HOST}" --port "${EDGEDL_PORT:-$DEFAULT_PORT}"
