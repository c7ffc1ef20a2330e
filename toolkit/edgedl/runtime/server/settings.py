"""Triton's trace and logging extensions, minimally and for real.

Trace (``/v2/trace/setting``, ``/v2/models/NAME/trace/setting``): the settings document Triton has, global and
per model (a model's setting set to null follows the global one again). With ``trace_level`` TIMESTAMPS and a
trace file given at start (``ServerConfig.trace_file``; never through the API, as in Triton), one request in
``trace_rate`` is traced, ``trace_count`` times at most (-1: no limit): its timestamps (request received,
queued, compute start, inputs ready, outputs start, compute end, request end) in nanoseconds of a monotonic
clock. Traces are written as a JSON array into the trace file when the server stops (at most
``MAX_HELD_TRACES`` are held), or with ``log_frequency`` N into ``FILE.0``, ``FILE.1``, ... every N traces. The
TENSORS level (tensor contents) is not offered.

Logging (``/v2/logging``): which of the server's messages are written to stderr (info, warning, error,
verbose level) and their format (``default`` or ``ISO8601`` timestamps); the log file is not changed through
the API (as in Triton).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from edgedl.runtime.server.protocol import HTTPError

TRACE_LEVELS = ("OFF", "TIMESTAMPS")
_NUMBERS = {"trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}
LOGGER = "edgedl.serve"
MAX_HELD_TRACES = 100_000


@dataclass(frozen=True)
class TraceSettings:
    level: tuple[str, ...] = ("OFF",)
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = "triton"

    def to_json(self) -> dict:
        return {"trace_level": list(self.level), "trace_rate": str(self.rate), "trace_count": str(self.count),
                "log_frequency": str(self.log_frequency), "trace_file": self.file, "trace_mode": self.mode}


def _parse_trace(base: TraceSettings, body: dict, file: str) -> dict:
    """The changes ``body`` asks for (field -> value, None = back to the global value), validated."""
    changes = {}
    for key, value in body.items():
        if key == "trace_file":
            if value is not None and value != file:
                raise HTTPError(501, "trace file location can not be updated through network protocol")
            continue
        if key == "trace_mode":
            if value not in (None, "triton"):
                raise HTTPError(400, f"trace_mode {value!r} is not supported; edgedl traces in 'triton' mode")
            continue
        if key == "trace_level":
            if value is None:
                changes["level"] = None
                continue
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise HTTPError(400, "trace_level must be a list of trace levels, such as [\"TIMESTAMPS\"]")
            levels = tuple(dict.fromkeys(v.upper() for v in value))
            unknown = [v for v in levels if v not in TRACE_LEVELS]
            if unknown:
                raise HTTPError(400, f"trace level {unknown[0]} is not supported; use {' or '.join(TRACE_LEVELS)}")
            if "TIMESTAMPS" in levels and not file:
                raise HTTPError(400, "Attempting to set invalid trace setting :trace file name is not given "
                                     "(start the server with a trace file)")
            changes["level"] = ("OFF",) if levels == ("OFF",) else tuple(v for v in levels if v != "OFF")
            continue
        if key not in _NUMBERS:
            raise HTTPError(400, f"unknown trace setting '{key}'; the settings are trace_level, trace_rate, "
                                 "trace_count, log_frequency, trace_file, trace_mode")
        if value is None:
            changes[_NUMBERS[key]] = None
            continue
        try:
            number = int(value) if isinstance(value, str) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        low = -1 if key == "trace_count" else (1 if key == "trace_rate" else 0)
        if number is None or number < low:
            raise HTTPError(400, f"Unable to parse '{key}', got: {value}")
        changes[_NUMBERS[key]] = number
    return changes


class Tracer:
    """Trace settings (global and per model) and the traces they sample."""

    def __init__(self, trace_file: Path | None):
        self.file = str(trace_file) if trace_file else ""
        self.settings = TraceSettings(file=self.file)
        self.overrides: dict[str, dict] = {}  # model -> its own settings
        self._seen: dict[str, int] = {}
        self._left: dict[str, int] = {}
        self._traces: list[dict] = []
        self._written = 0
        self._next_id = 1
        self._lock = threading.Lock()
        self._enabled = False
        self._dropped = 0

    @property
    def enabled(self) -> bool:
        """Whether any request may be traced (a level other than OFF, globally or for a model)."""
        return self._enabled

    def _settle(self) -> None:
        self._enabled = self.settings.level != ("OFF",) or any(
            own.get("level", ("OFF",)) != ("OFF",) for own in self.overrides.values())

    def of(self, model: str | None) -> TraceSettings:
        if model is None:
            return self.settings
        return replace(self.settings, **self.overrides.get(model, {}))

    def update(self, body, model: str | None = None) -> TraceSettings:
        if not isinstance(body, dict):
            raise HTTPError(400, "trace settings must be a JSON object")
        changes = _parse_trace(self.of(model), body, self.file)
        if model is None:
            self.settings = replace(self.settings, **{k: v if v is not None else getattr(TraceSettings(), k)
                                                      for k, v in changes.items()})
            self._left.clear()
        else:
            own = self.overrides.setdefault(model, {})
            for key, value in changes.items():
                own.pop(key, None) if value is None else own.__setitem__(key, value)
            self._left.pop(model, None)
        self._settle()
        return self.of(model)

    def sample(self, model: str) -> bool:
        """Whether this request to ``model`` is traced (one in trace_rate, trace_count times at most)."""
        s = self.of(model)
        if s.level == ("OFF",):
            return False
        seen = self._seen.get(model, 0) + 1
        self._seen[model] = seen
        if (seen - 1) % s.rate:
            return False
        left = self._left.setdefault(model, s.count)
        if left == 0:
            return False
        if left > 0:
            self._left[model] = left - 1
        return True

    def record(self, model: str, version: str, request_id: str | None, stamps: list[tuple[str, float]]) -> None:
        if len(self._traces) >= MAX_HELD_TRACES:  # log_frequency 0 holds them until the end: not without bound
            if not self._dropped:
                logging.getLogger(LOGGER).warning("holding %d traces: later ones are dropped until they are "
                                                  "written; set log_frequency to write them as they come",
                                                  MAX_HELD_TRACES)
            self._dropped += 1
            return
        trace = {"id": self._next_id, "model_name": model, "model_version": int(version) if version.isdigit()
                 else version, "request_id": request_id or "",
                 "timestamps": [{"name": name, "ns": int(t * 1e9)} for name, t in stamps]}
        self._next_id += 1
        self._traces.append(trace)
        frequency = self.of(model).log_frequency
        if frequency and len(self._traces) >= frequency:
            self.flush(numbered=True)

    def flush(self, numbered: bool = False) -> None:
        """Write the traces held so far (``numbered``: into the next FILE.N, as Triton's log_frequency does)."""
        if not self._traces or not self.file:
            return
        traces, self._traces = self._traces, []
        with self._lock:
            path = f"{self.file}.{self._written}" if numbered else self.file
            self._written += numbered
            try:
                Path(path).write_text(json.dumps(traces, indent=0) + "\n")
            except OSError as exc:
                logging.getLogger(LOGGER).error("cannot write %d traces to %s: %s", len(traces), path, exc)


_FORMATS = {"default": "edgedl serve: %(levelname)s %(message)s",
            "ISO8601": "%(asctime)s edgedl serve: %(levelname)s %(message)s"}


class LogSettings:
    """What the server writes to its log (the ``edgedl.serve`` logger, on stderr)."""

    def __init__(self, log_file: str = ""):
        self.values = {"log_file": log_file, "log_info": True, "log_warning": True, "log_error": True,
                       "log_verbose_level": 0, "log_format": "default"}
        self.logger = logging.getLogger(LOGGER)
        self.handler = logging.StreamHandler(sys.stderr)
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        self._apply()

    def _apply(self) -> None:
        v = self.values
        if v["log_verbose_level"] > 0:
            level = logging.DEBUG
        elif v["log_info"]:
            level = logging.INFO
        elif v["log_warning"]:
            level = logging.WARNING
        elif v["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL + 1
        self.logger.setLevel(level)
        self.handler.setFormatter(logging.Formatter(_FORMATS[v["log_format"]], "%Y-%m-%dT%H:%M:%S"))

    def update(self, body) -> dict:
        if not isinstance(body, dict):
            raise HTTPError(400, "log settings must be a JSON object")
        changes = {}
        for key, value in body.items():
            if key not in self.values:
                raise HTTPError(400, f"unknown log setting '{key}'; the settings are {', '.join(self.values)}")
            if key == "log_file":
                if value != self.values["log_file"]:
                    raise HTTPError(501, "log file location can not be updated through network protocol")
            elif key == "log_verbose_level":
                if type(value) is not int or value < 0:
                    raise HTTPError(400, "log_verbose_level must be a non-negative integer")
            elif key == "log_format":
                if value not in _FORMATS:
                    raise HTTPError(400, f"log_format must be one of {', '.join(_FORMATS)}, got {value!r}")
            elif not isinstance(value, bool):
                raise HTTPError(400, f"{key} must be true or false")
            changes[key] = value
        self.values.update(changes)
        self._apply()
        return dict(self.values)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = True
